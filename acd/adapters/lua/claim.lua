-- Claim the best (caller, agent) pair, atomically: nobody else can take either of them.
-- KEYS: none (key names are built from the prefix, all in one Redis instance).
-- ARGV: prefix, mode ('skill' or 'agent'), skill name or agent id, now, escalation rules (JSON:
--   {skill: {"min": level, "steps": [[after_seconds, min_level or null, [overflow skills]]]}}).
-- Each waiting caller has a ring that widens with its wait (bullseye): first agents of its skill
-- at or above the queue's minimum level, then lower levels, then agents of overflow skills.
-- 'skill': callers of that queue (best first) against the best agents their ring accepts.
-- 'agent': that agent (if available) against the best caller, across the queues it may serve.
--   ARGV[6]: the claiming controller's Asterisk node ('' = no hand-off).
--   ARGV[7]: 'skill' mode only: pairs to claim at most in this call (default 1), so that a queue
--   with several callers and free agents is dispatched in one round trip.
-- A caller held by another node is handed to that node's controller, which alone can redirect
-- its channel: its uid goes on P:connect:NODE in the same atomic step.
-- Returns {more, uid, agent_id, queue skill, caller's node, caller's channel, kind, held_at, uid,
-- ...}: the pairs claimed (none, one, or up to ARGV[7]), with what the connect needs of the call
-- (its channel; kind 'callback' for a callback, else ''; when its channel headed for the hold
-- context), and more = 1 when the queue may still hold a pair (it stopped at the
-- limit with callers left) else 0: the caller claims again only then.
local prefix, mode, which, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local mynode = ARGV[6] or ''
local limit = tonumber(ARGV[7]) or 1
local rules = cjson.decode(ARGV[5])
local SCAN = 20  -- callers looked at per queue: the best ones, where a match is decided

-- From overload level 1 (P:overload level) queues borrow their overflow skills' agents at once,
-- whatever the wait: the first action of the overload plan.
local borrow = (tonumber(redis.call('HGET', prefix .. ':overload', 'level')) or 0) >= 1

local function ring(skill, waited)
  local r = rules[skill]
  if not r then return 1, {} end
  local min, over = r.min, {}
  for _, step in ipairs(r.steps) do
    if waited >= step[1] then
      if step[2] ~= cjson.null then min = step[2] end
    end
    if waited >= step[1] or borrow then
      for _, o in ipairs(step[3]) do table.insert(over, o) end
    end
  end
  return min, over
end

local function waited(uid)
  local t = tonumber(redis.call('HGET', prefix .. ':call:' .. uid, 'enqueued_at'))
  return now - (t or now)
end

-- The best available agent of a skill and its level (looked up once per skill per claim). An
-- entry whose agent is no longer available, or no longer has the skill, is stale: it is dropped
-- and the next one looked at, so one stale entry never blocks a queue.
local best_of = {}
local function best_agent(skill)
  if best_of[skill] then return best_of[skill][1], best_of[skill][2] end
  local akey = prefix .. ':avail:' .. skill
  while true do
    local a = redis.call('ZRANGE', akey, 0, 0)
    if #a == 0 then
      best_of[skill] = {nil, nil}
      return nil, nil
    end
    local fields = redis.call('HMGET', prefix .. ':agent:' .. a[1], 'state', 'skills')
    local skills = ',' .. (fields[2] or '')
    local _, j = string.find(skills, ',' .. skill .. ':', 1, true)
    local level = j and tonumber(string.match(skills, '^(%d+)', j + 1))
    if fields[1] == 'available' and level then
      best_of[skill] = {a[1], level}
      return a[1], level
    end
    redis.call('ZREM', akey, a[1])
  end
end

local function heads(skill)
  return redis.call('ZRANGE', prefix .. ':q:' .. skill, 0, SCAN - 1, 'WITHSCORES')
end

-- A paused queue (P:queue_state) is dispatched from by nobody; its callers keep their places.
local function paused(queue)
  return redis.call('HGET', prefix .. ':queue_state', queue) == 'paused'
end

-- One pair: {uid, agent, skill, node, channel, kind, held_at}; nil when there is none; 'stale' when the pair found was
-- stale (its entry dropped: looking again may find another).
local function claim_once()
  local uid, agent, skill
  if mode == 'skill' then
    skill = which
    if paused(skill) then return nil end
    local h = heads(skill)
    for i = 1, #h, 2 do
      local min, over = ring(skill, waited(h[i]))
      local a, level = best_agent(skill)
      if a and level >= min then
        uid, agent = h[i], a
        break
      end
      for _, o in ipairs(over) do
        local oa = best_agent(o)
        if oa then
          uid, agent = h[i], oa
          break
        end
      end
      if uid then break end
    end
    if not uid then return nil end
  else
    agent = which
    local akey = prefix .. ':agent:' .. agent
    if redis.call('HGET', akey, 'state') ~= 'available' then return nil end
    local levels = {}
    for s in string.gmatch(redis.call('HGET', akey, 'skills') or '', '([^,]+)') do
      local name, level = string.match(s, '^([^:]+):(%d+)$')
      levels[name] = tonumber(level)
    end
    local best
    local function consider(queue, accepts)
      if paused(queue) then return end
      local h = heads(queue)
      for i = 1, #h, 2 do
        local score = tonumber(h[i + 1])
        if best ~= nil and score >= best then return end
        if accepts(h[i]) then
          best, uid, skill = score, h[i], queue
          return
        end
      end
    end
    for name, level in pairs(levels) do
      consider(name, function(u)
        local min = ring(name, waited(u))
        return level >= min
      end)
    end
    -- queues that overflow into one of this agent's skills
    for queue, r in pairs(rules) do
      if levels[queue] == nil then
        local reaches = false
        for _, step in ipairs(r.steps) do
          for _, o in ipairs(step[3]) do
            if levels[o] ~= nil then reaches = true end
          end
        end
        if reaches then
          consider(queue, function(u)
            local _, over = ring(queue, waited(u))
            for _, o in ipairs(over) do
              if levels[o] ~= nil then return true end
            end
            return false
          end)
        end
      end
    end
    if not uid then return nil end
  end
  local akey = prefix .. ':agent:' .. agent
  local ckey = prefix .. ':call:' .. uid
  if redis.call('HGET', akey, 'state') ~= 'available' then return 'stale' end
  if not CALL.offer.from[redis.call('HGET', ckey, 'state') or ''] then
    -- a stale queue entry (the call hash expired or moved on): drop it, let the caller retry
    redis.call('ZREM', prefix .. ':q:' .. skill, uid)
    return 'stale'
  end
  redis.call('ZREM', prefix .. ':q:' .. skill, uid)
  for s in string.gmatch(redis.call('HGET', akey, 'skills') or '', '([^,]+)') do
    redis.call('ZREM', prefix .. ':avail:' .. string.match(s, '^([^:]+)'), agent)
  end
  redis.call('HSET', akey, 'state', 'reserved', 'call', uid, 'state_since', now)
  -- The reservation's lease (lease_sweep.lua): any controller takes the agent back if the
  -- connect never happens (the caller's node's controller is down).
  redis.call('ZADD', prefix .. ':leases', now, agent)
  redis.call('HSET', ckey, 'state', CALL.offer.to, 'agent', agent)
  local call = redis.call('HMGET', ckey, 'node', 'channel', 'kind', 'held_at')
  local node = call[1] or ''
  if mynode ~= '' and node ~= '' and node ~= mynode then
    redis.call('RPUSH', prefix .. ':connect:' .. node, uid)
  end
  best_of = {}  -- the agent taken may have been the best of several skills
  return {uid, agent, skill, node, call[2] or '', call[3] or '', call[4] or ''}
end

local out = {0}
local tries = (mode == 'skill') and limit or 1
while tries > 0 do
  local pair = claim_once()
  if pair == nil then break end
  if pair ~= 'stale' then
    for _, v in ipairs(pair) do out[#out + 1] = v end
  end
  tries = tries - 1
end
if mode == 'skill' and tries == 0 and redis.call('ZCARD', prefix .. ':q:' .. which) > 0 then
  out[1] = 1
end
return out
