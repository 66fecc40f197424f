-- A supervisor pins the overload level ('' = back to the governor's computed level), in one step
-- with the effective level (so a governor tick cannot undo it) and, when `who` is given, its
-- audit entry. KEYS: the overload hash, the audit stream. ARGV: pinned level or '', who ('' = no
-- audit), now, the audit stream's cap. Returns the overload hash as it was before, flattened.
local before = redis.call('HGETALL', KEYS[1])
local was = redis.call('HGET', KEYS[1], 'pinned') or ''
local computed = redis.call('HGET', KEYS[1], 'computed') or ''
if computed == '' then computed = '0' end
local level = ARGV[1]
if level == '' then level = computed end
-- The audit entry first: a script stops at its first failing command, so a change is never
-- made without its entry.
if ARGV[2] ~= '' then
  local after = ARGV[1]
  if after == '' then after = 'auto' end
  if was == '' then was = 'auto' end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
    'who', ARGV[2], 'what', 'overload', 'before', was, 'after', after, 'at', ARGV[3])
end
redis.call('HSET', KEYS[1], 'pinned', ARGV[1], 'level', level)
return before
