-- Change an agent's skills and levels ("name:level,..."); an available agent is re-ranked in the
-- available sets at once (same idle time). ARGV: prefix, agent id, skills, who: a supervisor
-- (the skills then outlive restarts), or '' for the configuration, which gives way to a
-- supervisor's choice; a supervisor's change is written with its entry in P:audit, in this one
-- step), now, the audit stream's cap.
-- Returns the skills before ('' for an agent that had none yet), or false for an unknown agent.
local prefix, agent, skills, who = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local akey = prefix .. ':agent:' .. agent
if redis.call('EXISTS', akey) == 0 then return false end
if who == '' and redis.call('HGET', akey, 'skills_set_by') then
  return redis.call('HGET', akey, 'skills')
end
local before = redis.call('HGET', akey, 'skills') or ''
if who ~= '' then
  -- The entry first: a script stops at its first failing command.
  redis.call('XADD', prefix .. ':audit', 'MAXLEN', '~', ARGV[6], '*', 'who', who,
    'what', 'agent ' .. agent .. ' skills', 'before', before, 'after', skills, 'at', ARGV[5])
end
for s in string.gmatch(before, '([^,]+)') do
  redis.call('ZREM', prefix .. ':avail:' .. string.match(s, '^([^:]+)'), agent)
end
redis.call('HSET', akey, 'skills', skills)
if who ~= '' then redis.call('HSET', akey, 'skills_set_by', who) end
if redis.call('HGET', akey, 'state') == 'available' then
  local idle = tonumber(redis.call('HGET', akey, 'idle_since')) or 0
  for s in string.gmatch(skills, '([^,]+)') do
    local name, level = string.match(s, '^([^:]+):(%d+)$')
    redis.call('ZADD', prefix .. ':avail:' .. name, (10 - tonumber(level)) * 1e10 + idle, agent)
  end
end
return before
