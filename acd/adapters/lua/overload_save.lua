-- A governor's tick: store its node's computed level, and the deployment's: the highest level
-- reported by a controller within `stale_after` seconds (every controller reads the same floor,
-- so their loads agree; a node whose AMI link failed reports 4, and the deployment is at 4 while
-- it does, instead of flipping between its level and the others' on every tick). A controller
-- that stops reporting stops counting. The effective level is the pin when there is one. One
-- step, so a pin landing meanwhile (overload_pin.lua) is never overwritten.
-- KEYS: the overload hash, the nodes' reports (node -> "level time below_since").
-- ARGV: computed level, below_since ('' = none), now, node, stale_after seconds.
-- Returns the effective level.
local now, stale = tonumber(ARGV[3]), tonumber(ARGV[5])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[1] .. ' ' .. ARGV[3] .. ' ' .. ARGV[2])
local merged = 0
local reports = redis.call('HGETALL', KEYS[2])
for i = 1, #reports, 2 do
  local level, at = string.match(reports[i + 1], '^(%d+) (%S+)')
  if not level or tonumber(at) == nil or tonumber(at) < now - stale then
    redis.call('HDEL', KEYS[2], reports[i])
  elseif tonumber(level) > merged then
    merged = tonumber(level)
  end
end
local pinned = redis.call('HGET', KEYS[1], 'pinned')
local level = tostring(merged)
if pinned and pinned ~= '' then level = pinned end
redis.call('HSET', KEYS[1], 'computed', merged, 'level', level, 'updated_at', ARGV[3])
return tonumber(level)
