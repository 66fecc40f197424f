-- An attempt of a callback is over. ARGV: prefix, callback id, attempt call uid, now, outcome
-- ('retry', 'answered', 'failed', 'expired', 'unknown', or 'again' = not dialled: back to due
-- without counting the attempt), due time for retry/again, last dial status.
-- Only the attempt the callback is on may finish it (a late or repeated report changes nothing).
-- Returns 1 if applied.
local prefix, orig, uid, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local outcome, at, status = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local key = prefix .. ':callback:' .. orig
if redis.call('HGET', key, 'current') ~= uid or redis.call('HGET', key, 'state') ~= 'queued' then
  return 0
end
redis.call('SREM', prefix .. ':callbacks:active', orig)
redis.call('HSET', key, 'current', '', 'last_status', status, 'last_attempt_at', now)
if outcome == 'retry' or outcome == 'again' then
  if outcome == 'again' then redis.call('HINCRBY', key, 'attempts', -1) end
  redis.call('HSET', key, 'state', 'pending')
  redis.call('ZADD', prefix .. ':callbacks:due', at, orig)
else
  redis.call('HSET', key, 'state', outcome, 'finished_at', now)
end
return 1
