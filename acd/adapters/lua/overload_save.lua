-- The governor's tick: store its computed level; the effective level is the pin when there is
-- one. One step, so a pin landing meanwhile (overload_pin.lua) is never overwritten.
-- KEYS: the overload hash. ARGV: computed level, below_since ('' = none), now.
-- Returns the effective level.
local pinned = redis.call('HGET', KEYS[1], 'pinned')
local level = ARGV[1]
if pinned and pinned ~= '' then level = pinned end
redis.call('HSET', KEYS[1], 'computed', ARGV[1], 'level', level,
  'below_since', ARGV[2], 'updated_at', ARGV[3])
return tonumber(level)
