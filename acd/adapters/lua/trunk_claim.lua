-- Take a channel on the first trunk, in the order given, that has one free: the channels in use
-- are the legs in P:trunk_legs:NAME (uid -> node), shared by every controller, so capacity holds
-- across them. ARGV: prefix, leg uid, node, then name, capacity pairs (the trunks whose breakers
-- let a call through, best first). Returns the trunk's name, or false when all are full.
local prefix, uid, node = ARGV[1], ARGV[2], ARGV[3]
for i = 4, #ARGV, 2 do
  local legs = prefix .. ':trunk_legs:' .. ARGV[i]
  if redis.call('HLEN', legs) < tonumber(ARGV[i + 1]) then
    redis.call('HSET', legs, uid, node)
    return ARGV[i]
  end
end
return false
