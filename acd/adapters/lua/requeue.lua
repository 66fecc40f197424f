-- Put an offered caller back in its queue at its original place (its original score).
-- ARGV: prefix, uid. Returns 1 if requeued, 0 if the call is gone or not offered.
local prefix, uid = ARGV[1], ARGV[2]
local ckey = prefix .. ':call:' .. uid
local state = redis.call('HGET', ckey, 'state')
if state ~= 'offered' and state ~= 'connected' then return 0 end
local skill, score = redis.call('HGET', ckey, 'skill'), redis.call('HGET', ckey, 'score')
redis.call('HSET', ckey, 'state', 'queued', 'agent', '')
redis.call('ZADD', prefix .. ':q:' .. skill, score, uid)
return 1
