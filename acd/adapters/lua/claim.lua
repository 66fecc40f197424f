-- Claim the best (caller, agent) pair, atomically: nobody else can take either of them.
-- KEYS: none (key names are built from the prefix, all in one Redis instance).
-- ARGV: prefix, mode ('skill' or 'agent'), skill name or agent id.
-- 'skill': the head caller of that skill's queue with the best available agent of that skill.
-- 'agent': that agent (if available) with the best head caller across the agent's skills.
-- Returns {uid, agent_id, skill} or false.
local prefix, mode, which = ARGV[1], ARGV[2], ARGV[3]

local function head(skill)
  local h = redis.call('ZRANGE', prefix .. ':q:' .. skill, 0, 0, 'WITHSCORES')
  if #h == 0 then return nil, nil end
  return h[1], tonumber(h[2])
end

local uid, agent, skill
if mode == 'skill' then
  skill = which
  uid = head(skill)
  if not uid then return false end
  local a = redis.call('ZRANGE', prefix .. ':avail:' .. skill, 0, 0)
  if #a == 0 then return false end
  agent = a[1]
else
  agent = which
  local akey = prefix .. ':agent:' .. agent
  if redis.call('HGET', akey, 'state') ~= 'available' then return false end
  local best
  for s in string.gmatch(redis.call('HGET', akey, 'skills') or '', '([^,]+)') do
    local name = string.match(s, '^([^:]+)')
    local u, score = head(name)
    if u and (best == nil or score < best) then
      best, uid, skill = score, u, name
    end
  end
  if not uid then return false end
end

local akey = prefix .. ':agent:' .. agent
local ckey = prefix .. ':call:' .. uid
if redis.call('HGET', akey, 'state') ~= 'available' then return false end
if redis.call('HGET', ckey, 'state') ~= 'queued' then
  -- a stale queue entry (the call hash expired or moved on): drop it, let the caller retry
  redis.call('ZREM', prefix .. ':q:' .. skill, uid)
  return false
end
redis.call('ZREM', prefix .. ':q:' .. skill, uid)
for s in string.gmatch(redis.call('HGET', akey, 'skills') or '', '([^,]+)') do
  redis.call('ZREM', prefix .. ':avail:' .. string.match(s, '^([^:]+)'), agent)
end
redis.call('HSET', akey, 'state', 'reserved', 'call', uid)
redis.call('HSET', ckey, 'state', 'offered', 'agent', agent)
return {uid, agent, skill}
