-- Put an offered caller back at the front of its queue (its agent did not answer).
-- ARGV: prefix, uid, now (when its channel heads back to the hold context: held_at).
-- Returns 1 if requeued, 0 if the call is gone or not offered.
local prefix, uid = ARGV[1], ARGV[2]
local ckey = prefix .. ':call:' .. uid
local state = redis.call('HGET', ckey, 'state')
if not CALL.requeue.from[state or ''] then return 0 end
local skill, score = redis.call('HGET', ckey, 'skill'), tonumber(redis.call('HGET', ckey, 'score'))
local qkey = prefix .. ':q:' .. skill
local head = redis.call('ZRANGE', qkey, 0, 0, 'WITHSCORES')
if #head > 0 and tonumber(head[2]) <= score then score = tonumber(head[2]) - 0.001 end
redis.call('HSET', ckey, 'state', CALL.requeue.to, 'agent', '', 'score', score)
if ARGV[3] then redis.call('HSET', ckey, 'held_at', ARGV[3]) end
redis.call('ZADD', qkey, score, uid)
return 1
