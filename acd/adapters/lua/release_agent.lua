-- Make an agent available again, if it still belongs to the given call (or to none, with '').
-- ARGV: prefix, agent id, call uid ('' = any), now (seconds).
local prefix, agent, uid, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local akey = prefix .. ':agent:' .. agent
if redis.call('EXISTS', akey) == 0 then return 0 end
if uid ~= '' and redis.call('HGET', akey, 'call') ~= uid then return 0 end
if redis.call('HGET', akey, 'state') == 'logged_out' then return 0 end
redis.call('HSET', akey, 'state', 'available', 'call', '', 'idle_since', now)
for s in string.gmatch(redis.call('HGET', akey, 'skills') or '', '([^,]+)') do
  local name, level = string.match(s, '^([^:]+):(%d+)$')
  -- best agent first: higher level, then longest idle (lower score wins)
  redis.call('ZADD', prefix .. ':avail:' .. name, (10 - tonumber(level)) * 1e10 + now, agent)
end
return 1
