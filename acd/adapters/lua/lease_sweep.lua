-- The agents whose lease is over: held (reserved or ringing) for one call since `lease` seconds
-- or more. claim.lua puts an agent on P:leases when it reserves it, scored with the time; an
-- entry is looked at once its score is `lease` old: an agent no longer held leaves the set, an
-- agent that moved on within the lease (it started ringing) is scored again from that move, and
-- an agent held too long is returned, left as it is: the caller takes it back with
-- lease_reclaim.lua (so that a controller that dies half-way leaves the entry for the next).
-- ARGV: prefix, now, lease seconds, entries looked at at most, then the held states
--   (acd/domain/agent.py: the sources of RELEASE).
-- Returns {agent, call, agent, call, ...} of the expired.
local prefix, now, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local held = {}
for i = 5, #ARGV do held[ARGV[i]] = true end
local lkey = prefix .. ':leases'
local out = {}
for _, agent in ipairs(redis.call('ZRANGEBYSCORE', lkey, '-inf', now - lease, 'LIMIT', 0, limit)) do
  local a = redis.call('HMGET', prefix .. ':agent:' .. agent, 'state', 'call', 'state_since')
  local since = tonumber(a[3]) or 0
  if not held[a[1] or ''] then
    redis.call('ZREM', lkey, agent)
  elseif since > now - lease then
    redis.call('ZADD', lkey, since, agent)
  else
    out[#out + 1] = agent
    out[#out + 1] = a[2] or ''
  end
end
return out
