-- An alert rule changed status: record it and put its notice in the outbox, in one step, once
-- for the deployment (every controller evaluates the rules; the first to see a change sends it).
-- KEYS: P:alert:NAME, P:alerts:outbox. ARGV: the new status, the notice (JSON; '' = no webhook,
-- nothing to send).
-- Returns 1 when the status changed, 0 when it had it already.
if redis.call('GET', KEYS[1]) == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('RPUSH', KEYS[2], ARGV[2]) end
return 1
