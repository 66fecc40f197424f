-- Record a callback a caller asked for, durably, keeping the caller's place (its score and join
-- time), due at once. A caller who was waiting (leave = 1) leaves its queue in the same step,
-- unless an agent was claimed for it meanwhile (then nothing changes: it is being connected).
-- ARGV: prefix, uid, skill, now, callback TTL, leave (0/1), then the callback's field/value pairs.
-- Returns 1 when recorded, 0 when the caller was no longer waiting.
local prefix, uid, skill, now, ttl = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local leave = ARGV[6] == '1'
local ckey = prefix .. ':call:' .. uid
if leave then
  if not CALL.leave_for_callback.from[redis.call('HGET', ckey, 'state') or ''] then return 0 end
  redis.call('HSET', ckey, 'state', CALL.leave_for_callback.to)
end
redis.call('ZREM', prefix .. ':q:' .. skill, uid)
local key = prefix .. ':callback:' .. uid
redis.call('DEL', key)
for i = 7, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', key, ttl)
redis.call('ZADD', prefix .. ':callbacks:due', now, uid)
return 1
