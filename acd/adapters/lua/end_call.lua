-- A caller left (hung up, or the static fallback took it): forget it, and move the agent it held:
-- reserved or ringing -> available (nothing was said), on call -> wrap-up (or available at once
-- when wrap-up is 0). A call that was answered adds its handle time (talk + wrap-up) to the
-- queue's smoothed mean (P:stats:SKILL aht), which the wait estimate uses.
-- ARGV: prefix, uid, now, wrap-up seconds, '1' to take the call's live marker too (P:live:UID,
-- see RedisStore.journey: a hangup takes it, so that the call's end is recorded once).
-- Returns {agent id or '', the agent's new state or '', the live marker or '', the call's fields
-- as they were (flat name, value list; empty when there was no call)}.
local prefix, uid, now, wrap = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local live = ''
if ARGV[5] == '1' then live = redis.call('GETDEL', prefix .. ':live:' .. uid) or '' end
local ckey = prefix .. ':call:' .. uid
local fields = redis.call('HGETALL', ckey)
if #fields == 0 then return {'', '', live, fields} end
local skill, agent, node = redis.call('HGET', ckey, 'skill'), redis.call('HGET', ckey, 'agent'), redis.call('HGET', ckey, 'node')
local answered = tonumber(redis.call('HGET', ckey, 'answered_at'))
if answered then
  local skey = prefix .. ':stats:' .. skill
  local sample = (now - answered) + wrap
  local aht = tonumber(redis.call('HGET', skey, 'aht'))
  if aht then aht = aht + 0.2 * (sample - aht) else aht = sample end
  redis.call('HSET', skey, 'aht', aht)
  redis.call('HINCRBY', skey, 'answered', 1)
end
redis.call('ZREM', prefix .. ':q:' .. skill, uid)
if node then redis.call('SREM', prefix .. ':calls:' .. node, uid) end
redis.call('DEL', ckey)
if not agent or agent == '' then return {'', '', live, fields} end
local akey = prefix .. ':agent:' .. agent
local state = redis.call('HGET', akey, 'state')
if redis.call('HGET', akey, 'call') ~= uid then return {'', '', live, fields} end
local target
if state == 'reserved' or state == 'ringing' then
  target = 'available'
elseif state == 'on_call' then
  target = (wrap > 0) and 'wrap_up' or 'available'
else
  return {'', '', live, fields}
end
-- Free again while its phone is busy outside the ACD (agent.settle): not offered anything yet.
if target == 'available' and redis.call('HGET', akey, 'device_busy') == '1' then
  target = 'device_busy'
  redis.call('HSET', akey, 'call', '', 'reason', redis.call('HGET', akey, 'device') or '')
end
redis.call('HSET', akey, 'state', target, 'state_since', now, 'last_call_end', now)
if target == 'available' then
  redis.call('HSET', akey, 'call', '', 'idle_since', now)
  for s in string.gmatch(redis.call('HGET', akey, 'skills') or '', '([^,]+)') do
    local name, level = string.match(s, '^([^:]+):(%d+)$')
    redis.call('ZADD', prefix .. ':avail:' .. name, (10 - tonumber(level)) * 1e10 + now, agent)
  end
elseif target == 'wrap_up' then
  redis.call('ZADD', prefix .. ':wrapups', now + wrap, agent)
end
return {agent, target, live, fields}
