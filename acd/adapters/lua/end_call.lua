-- A caller left (hung up, or the static fallback took it): forget it, free its agent if reserved.
-- ARGV: prefix, uid, now. Returns the agent that was released or ''.
local prefix, uid, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ckey = prefix .. ':call:' .. uid
if redis.call('EXISTS', ckey) == 0 then return '' end
local skill, agent, node = redis.call('HGET', ckey, 'skill'), redis.call('HGET', ckey, 'agent'), redis.call('HGET', ckey, 'node')
redis.call('ZREM', prefix .. ':q:' .. skill, uid)
if node then redis.call('SREM', prefix .. ':calls:' .. node, uid) end
redis.call('DEL', ckey)
if agent and agent ~= '' then
  local akey = prefix .. ':agent:' .. agent
  if redis.call('HGET', akey, 'call') == uid and redis.call('HGET', akey, 'state') ~= 'logged_out' then
    redis.call('HSET', akey, 'state', 'available', 'call', '', 'idle_since', now)
    for s in string.gmatch(redis.call('HGET', akey, 'skills') or '', '([^,]+)') do
      local name, level = string.match(s, '^([^:]+):(%d+)$')
      redis.call('ZADD', prefix .. ':avail:' .. name, (10 - tonumber(level)) * 1e10 + now, agent)
    end
    return agent
  end
end
return ''
