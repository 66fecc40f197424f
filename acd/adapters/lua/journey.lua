-- Journey events (RedisStore.journey): a batch of them, appended to P:journey with the live
-- counters they move, in one atomic step and one command (the Recorder's group commit).
-- ARGV: prefix, minid (XADD MINID ~: entries older than the retention), then per event:
--   event, uid, t, node, n, n x (field, value), m, m x (skill, minute, counter, increment,
--   expire at)
local prefix, minid = ARGV[1], ARGV[2]
local stream = prefix .. ':journey'
local i = 3
while i <= #ARGV do
  local event, uid, t, node = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local n = tonumber(ARGV[i + 4])
  local entry = {'event', event, 'uid', uid, 't', t, 'node', node}
  for j = i + 5, i + 4 + 2 * n do entry[#entry + 1] = ARGV[j] end
  i = i + 5 + 2 * n
  redis.call('XADD', stream, 'MINID', '~', minid, '*', unpack(entry))
  local m = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, m do
    local key = prefix .. ':sl:' .. ARGV[i] .. ':' .. ARGV[i + 1]
    redis.call('HINCRBY', key, ARGV[i + 2], ARGV[i + 3])
    redis.call('EXPIREAT', key, ARGV[i + 4])
    i = i + 5
  end
end
return 1
