-- Apply one agent event atomically: a compare-and-set on the agent's state.
-- ARGV: prefix, agent id, target state, now, call ('' = any call), reason, wrap_until,
--       wrapped_by ('' or a time: only if the agent's wrap-up was due by then, so that the
--       timer of an earlier wrap-up cannot cut a later one short),
--       device, device busy ('' = no news of the phone; else Asterisk's device state of the
--       agent's phone and '1' when it cannot take a call, recorded whatever else happens),
--       audit: who ('' = none: a routine event), what, the audit stream's cap (a supervisor's
--       change is written with its entry in P:audit, in this one step),
--       then the source states the event may leave from (acd/domain/agent.py's table).
-- A transition to 'available' while the phone is busy lands in 'device_busy' (agent.settle).
-- Returns {1, previous state} when applied, {0, current state} when not.
local prefix, agent, target, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local call, reason, wrap_until = ARGV[5], ARGV[6], tonumber(ARGV[7])
local wrapped_by = tonumber(ARGV[8])
local device, device_busy = ARGV[9], ARGV[10]
local who, what, maxlen = ARGV[11], ARGV[12], ARGV[13]
local akey = prefix .. ':agent:' .. agent
-- The audit entry goes first, once the event is known to apply: a script stops at its first
-- failing command, so no change is made without its entry.
local function audit(before, after)
  if who == '' then return end
  if reason ~= '' then after = after .. ' ' .. reason end
  redis.call('XADD', prefix .. ':audit', 'MAXLEN', '~', maxlen, '*',
    'who', who, 'what', what, 'before', before, 'after', after, 'at', ARGV[4])
end
local state = redis.call('HGET', akey, 'state')
if not state then return {0, 'unknown'} end
if device ~= '' then
  redis.call('HSET', akey, 'device', device, 'device_busy', device_busy)
end
local allowed = false
for i = 14, #ARGV do
  if ARGV[i] == state then allowed = true end
end
if not allowed then return {0, state} end
if call ~= '' and redis.call('HGET', akey, 'call') ~= call then return {0, state} end
if wrapped_by and state == 'wrap_up' then
  local due = tonumber(redis.call('ZSCORE', prefix .. ':wrapups', agent))
  if due and due > wrapped_by then return {0, state} end
end
if target == 'available' and redis.call('HGET', akey, 'device_busy') == '1' then
  target = 'device_busy'
  reason = redis.call('HGET', akey, 'device') or ''
end
if target == state and target == 'device_busy' then
  audit(state, target)
  redis.call('HSET', akey, 'reason', reason)
  return {1, state}
end

audit(state, target)
redis.call('HSET', akey, 'state', target, 'state_since', now)
local skills = redis.call('HGET', akey, 'skills') or ''
for s in string.gmatch(skills, '([^,]+)') do
  local name, level = string.match(s, '^([^:]+):(%d+)$')
  if target == 'available' then
    -- best agent first: higher level, then longest idle (lower score wins)
    redis.call('ZADD', prefix .. ':avail:' .. name, (10 - tonumber(level)) * 1e10 + now, agent)
  else
    redis.call('ZREM', prefix .. ':avail:' .. name, agent)
  end
end
if target == 'available' then
  redis.call('HSET', akey, 'idle_since', now, 'call', '', 'reason', '')
elseif target == 'paused' or target == 'device_busy' then
  redis.call('HSET', akey, 'call', '', 'reason', reason)
elseif target == 'logged_out' then
  redis.call('HSET', akey, 'call', '', 'reason', '')
end
if target == 'wrap_up' then
  redis.call('ZADD', prefix .. ':wrapups', wrap_until, agent)
else
  redis.call('ZREM', prefix .. ':wrapups', agent)
end
return {1, state}
