-- Change an agent's skills and levels ("name:level,..."); an available agent is re-ranked in the
-- available sets at once (same idle time). ARGV: prefix, agent id, skills.
-- Returns the skills before, or false for an unknown agent.
local prefix, agent, skills, who = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local akey = prefix .. ':agent:' .. agent
local before = redis.call('HGET', akey, 'skills')
if not before then return false end
for s in string.gmatch(before, '([^,]+)') do
  redis.call('ZREM', prefix .. ':avail:' .. string.match(s, '^([^:]+)'), agent)
end
redis.call('HSET', akey, 'skills', skills, 'skills_set_by', who)
if redis.call('HGET', akey, 'state') == 'available' then
  local idle = tonumber(redis.call('HGET', akey, 'idle_since')) or 0
  for s in string.gmatch(skills, '([^,]+)') do
    local name, level = string.match(s, '^([^:]+):(%d+)$')
    redis.call('ZADD', prefix .. ':avail:' .. name, (10 - tonumber(level)) * 1e10 + idle, agent)
  end
end
return before
