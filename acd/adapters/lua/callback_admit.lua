-- Admit due callbacks into their skill queues, at their caller's original place (score), as
-- virtual callers: a call hash P:call:cb-ORIG-N (one per attempt N) that claims pick like any
-- other caller. Atomic, so with several controllers each attempt is admitted once.
-- ARGV: prefix, now, node (the controller that will originate), limit (callbacks that may be in
--   the queues or on the phone at once), expiry seconds, call TTL, then the skills open for
--   callbacks now (hours).
-- Returns the list of skills that got a callback (for the dispatcher), and expired callbacks.
local prefix, now, node = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local limit, expiry, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local open = {}
for i = 7, #ARGV do open[ARGV[i]] = true end
local active = prefix .. ':callbacks:active'
local due = redis.call('ZRANGEBYSCORE', prefix .. ':callbacks:due', '-inf', now)
local admitted, expired = {}, {}
for _, orig in ipairs(due) do
  local key = prefix .. ':callback:' .. orig
  local cb = redis.call('HMGET', key, 'skill', 'score', 'enqueued_at', 'requested_at', 'attempts', 'state', 'number')
  local skill, score, joined, requested = cb[1], cb[2], cb[3], tonumber(cb[4])
  local attempts, state, number = tonumber(cb[5]) or 0, cb[6], cb[7]
  if not skill or state ~= 'pending' then
    redis.call('ZREM', prefix .. ':callbacks:due', orig)  -- gone, or already handled
  elseif requested and now - requested >= expiry then
    redis.call('HSET', key, 'state', 'expired', 'finished_at', now)
    redis.call('ZREM', prefix .. ':callbacks:due', orig)
    table.insert(expired, orig)
  elseif open[skill] and redis.call('SCARD', active) < limit then
    attempts = attempts + 1
    local uid = 'cb-' .. orig .. '-' .. attempts
    local ckey = prefix .. ':call:' .. uid
    redis.call('HSET', ckey, 'uid', uid, 'kind', 'callback', 'callback', orig, 'skill', skill,
      'score', score, 'enqueued_at', joined or requested, 'state', 'queued', 'node', node,
      'number', number, 'attempt', attempts)
    redis.call('EXPIRE', ckey, ttl)
    redis.call('ZADD', prefix .. ':q:' .. skill, score, uid)
    redis.call('SADD', prefix .. ':calls:' .. node, uid)
    redis.call('SADD', active, orig)
    redis.call('HSET', key, 'state', 'queued', 'attempts', attempts, 'current', uid)
    redis.call('ZREM', prefix .. ':callbacks:due', orig)
    table.insert(admitted, skill)
  end
end
return {admitted, expired}
