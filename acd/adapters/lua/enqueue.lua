-- Put a caller in its skill queue. KEYS: call hash, skill queue, node's call set.
-- ARGV: uid, score, ttl seconds, then field/value pairs for the call hash.
local uid, score, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('DEL', KEYS[1])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'score', score)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], score, uid)
redis.call('SADD', KEYS[3], uid)
return 1
