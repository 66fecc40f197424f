-- Put an offered caller back at the front of its queue (its agent did not answer).
-- ARGV: prefix, uid, now (when its channel heads back to the hold context: held_at).
-- Returns 1 if requeued, 0 if the call is gone or not offered.
local prefix, uid = ARGV[1], ARGV[2]
local ckey = prefix .. ':call:' .. uid
local state = redis.call('HGET', ckey, 'state')
if not CALL.requeue.from[state or ''] then return 0 end
local skill, score = redis.call('HGET', ckey, 'skill'), tonumber(redis.call('HGET', ckey, 'score'))
requeue_front(prefix, ckey, uid, skill, score)
if ARGV[3] then redis.call('HSET', ckey, 'held_at', ARGV[3]) end
return 1
