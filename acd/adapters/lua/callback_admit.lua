-- Admit due callbacks into their skill queues, at their caller's original place (score), as
-- virtual callers: a call hash P:call:cb-ORIG-N (one per attempt N) that claims pick like any
-- other caller. Atomic, so with several controllers each attempt is admitted once.
-- ARGV: prefix, now, node (the controller that will originate), share, expiry seconds, call TTL,
--   then, for each skill open for callbacks now (hours, callbacks on), its name and how many
--   agents are staffed for it.
-- Pacing against live inbound load (acd/domain/callback.py admission_limit, the same rule):
-- while inbound callers wait in a skill's queue, callbacks of that skill in the queue or on the
-- phone stay within `share` of its staffed agents; while none wait, they may take every staffed
-- agent; at least one may always be in play (with nobody staffed it waits at its place in the
-- queue). So callbacks neither starve nor flood.
-- First the callbacks in play are checked: an attempt whose virtual caller is gone (its hash
-- expired, or its claim was dropped) did not happen and the callback is due again; one still
-- waiting in its queue past the expiry is taken out and expires.
-- Returns {skills that got a callback (for the dispatcher), callbacks that expired, the time the
-- next pending callback falls due ('' when none)}.
local prefix, now, node = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local share, expiry, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local staffed = {}
for i = 7, #ARGV, 2 do staffed[ARGV[i]] = tonumber(ARGV[i + 1]) end
local active = prefix .. ':callbacks:active'
local duekey = prefix .. ':callbacks:due'
local admitted, expired = {}, {}
local in_play, queued = {}, {}  -- per skill: callbacks in a queue or on the phone; in a queue

for _, orig in ipairs(redis.call('SMEMBERS', active)) do
  local key = prefix .. ':callback:' .. orig
  local cb = redis.call('HMGET', key, 'state', 'current', 'skill', 'requested_at')
  local state, current, skill, requested = cb[1], cb[2] or '', cb[3], tonumber(cb[4])
  if state ~= 'queued' or current == '' then
    redis.call('SREM', active, orig)  -- closed already (or gone): not in play
  else
    local ckey = prefix .. ':call:' .. current
    local cstate = redis.call('HGET', ckey, 'state')
    if not cstate then
      -- The attempt vanished before anyone was dialled: it does not count.
      redis.call('ZREM', prefix .. ':q:' .. skill, current)
      redis.call('SREM', active, orig)
      redis.call('HINCRBY', key, 'attempts', -1)
      redis.call('HSET', key, 'state', 'pending', 'current', '')
      redis.call('ZADD', duekey, now, orig)
    elseif cstate == CALL_STATE.queued and requested and now - requested >= expiry then
      redis.call('ZREM', prefix .. ':q:' .. skill, current)
      redis.call('SREM', prefix .. ':calls:' .. (redis.call('HGET', ckey, 'node') or ''), current)
      redis.call('DEL', ckey)
      redis.call('SREM', active, orig)
      redis.call('HSET', key, 'state', 'expired', 'current', '', 'finished_at', now)
      table.insert(expired, orig)
    else
      in_play[skill] = (in_play[skill] or 0) + 1
      if cstate == CALL_STATE.queued then queued[skill] = (queued[skill] or 0) + 1 end
    end
  end
end

local function limit(skill)
  local n = staffed[skill] or 0
  local inbound = redis.call('ZCARD', prefix .. ':q:' .. skill) - (queued[skill] or 0)
  if inbound <= 0 then return math.max(1, n) end
  return math.max(1, math.floor(share * n))
end

for _, orig in ipairs(redis.call('ZRANGEBYSCORE', duekey, '-inf', now)) do
  local key = prefix .. ':callback:' .. orig
  local cb = redis.call('HMGET', key, 'skill', 'score', 'enqueued_at', 'requested_at', 'attempts', 'state', 'number')
  local skill, score, joined, requested = cb[1], cb[2], cb[3], tonumber(cb[4])
  local attempts, state, number = tonumber(cb[5]) or 0, cb[6], cb[7]
  if not skill or state ~= 'pending' then
    redis.call('ZREM', duekey, orig)  -- gone, or already handled
  elseif requested and now - requested >= expiry then
    redis.call('HSET', key, 'state', 'expired', 'finished_at', now)
    redis.call('ZREM', duekey, orig)
    table.insert(expired, orig)
  elseif staffed[skill] and (in_play[skill] or 0) < limit(skill) then
    attempts = attempts + 1
    local uid = 'cb-' .. orig .. '-' .. attempts
    local ckey = prefix .. ':call:' .. uid
    redis.call('HSET', ckey, 'uid', uid, 'kind', 'callback', 'callback', orig, 'skill', skill,
      'score', score, 'enqueued_at', joined or requested, 'state', CALL.enqueue.to, 'node', node,
      'number', number, 'attempt', attempts)
    redis.call('EXPIRE', ckey, ttl)
    redis.call('ZADD', prefix .. ':q:' .. skill, score, uid)
    redis.call('SADD', prefix .. ':calls:' .. node, uid)
    redis.call('SADD', active, orig)
    redis.call('HSET', key, 'state', 'queued', 'attempts', attempts, 'current', uid)
    redis.call('ZREM', duekey, orig)
    in_play[skill] = (in_play[skill] or 0) + 1
    queued[skill] = (queued[skill] or 0) + 1
    table.insert(admitted, skill)
  end
end
local nxt = redis.call('ZRANGE', duekey, 0, 0, 'WITHSCORES')
return {admitted, expired, nxt[2] or ''}
