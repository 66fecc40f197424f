-- A supervisor's toggle on several fields of one hash (menu modes, queue states, callback modes),
-- with an audit entry per field, all in one step: nothing half-applied, no change unaudited.
-- KEYS: the hash, the audit stream. ARGV: who, now, the audit stream's cap, the new value, the
-- value that is stored as an absent field ('' = always stored), then per field: field, what (for
-- the audit), the value an absent field stands for. Returns the values before, in field order.
local who, now, maxlen, value, absent = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local before = {}
for i = 6, #ARGV, 3 do
  local field, what, default = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = redis.call('HGET', KEYS[1], field) or default
  -- The entry before the change: a script stops at its first failing command.
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*',
    'who', who, 'what', what, 'before', old, 'after', value, 'at', now)
  if absent ~= '' and value == absent then
    redis.call('HDEL', KEYS[1], field)
  else
    redis.call('HSET', KEYS[1], field, value)
  end
  before[#before + 1] = old
end
return before
