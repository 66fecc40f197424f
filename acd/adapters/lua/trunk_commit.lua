-- Commit a change to one trunk: its breaker's state (P:trunk:NAME, what
-- acd/domain/breaker.py's Breaker.dumps wrote) and its channels (P:trunk_legs:NAME, uid ->
-- node, shared by every controller), in one step, if neither changed since the controller
-- read them and decided (optimistic: on a conflict it reads again and decides again).
-- KEYS: P:trunk:NAME, P:trunk_legs:NAME. ARGV: the state read ('' = none), the channels in use
-- read ('' = do not check), the new state ('' = none), take | release | '' (the state only),
-- the leg's uid, this controller's node; then, for a supervisor's change (written with its
-- entry in KEYS[3], the audit stream, in this one step): who, what, before, after, now, the
-- stream's cap. Returns 1, or 0 on a conflict.
local state = redis.call('GET', KEYS[1]) or ''
if state ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and redis.call('HLEN', KEYS[2]) ~= tonumber(ARGV[2]) then return 0 end
local op, uid = ARGV[4], ARGV[5]
if op == 'take' and redis.call('HEXISTS', KEYS[2], uid) == 1 then return 0 end
if op == 'release' and redis.call('HEXISTS', KEYS[2], uid) == 0 then return 0 end
if (ARGV[7] or '') ~= '' then
  -- The entry first: a script stops at its first failing command.
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[12], '*', 'who', ARGV[7], 'what', ARGV[8],
    'before', ARGV[9], 'after', ARGV[10], 'at', ARGV[11])
end
if op == 'take' then
  if redis.call('HSETNX', KEYS[2], uid, ARGV[6]) == 0 then return 0 end
elseif op == 'release' then
  if redis.call('HDEL', KEYS[2], uid) == 0 then return 0 end
end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
elseif ARGV[3] ~= state then
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
