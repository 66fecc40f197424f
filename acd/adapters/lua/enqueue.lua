-- Put a caller in its skill queue. KEYS: call hash, skill queue, node's call set, the queue's
-- arrivals (a sorted set of recent joins, for the arrival rate).
-- ARGV: uid, score, ttl seconds, now, arrivals window seconds, then field/value pairs.
local uid, score, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now, window = tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('DEL', KEYS[1])
for i = 6, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
-- held_at: when the caller's channel heads for the hold context (a Redirect waits for the
-- caller's AcdHeld, at most a little after it: see acd.dispatch.service HOLD_SETTLE).
redis.call('HSET', KEYS[1], 'state', CALL.enqueue.to, 'score', score, 'held_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], score, uid)
redis.call('SADD', KEYS[3], uid)
redis.call('ZADD', KEYS[4], now, uid)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
redis.call('EXPIRE', KEYS[4], math.ceil(window) + 60)
return 1
