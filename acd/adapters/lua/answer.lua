-- A caller offered to an agent is now talking to it (its channel entered the agent's bridge):
-- the call becomes connected, with the time, and its wait is logged against the estimate given
-- at join (P:ewt_log, for the estimate's error), in one step.
-- KEYS: the call hash, P:ewt_log. ARGV: now, the log's approximate length.
-- Returns the call's fields as they were before (flat name, value list), or an empty list when
-- the call is gone or was not offered to an agent (nothing changed then).
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return fields end
local f = {}
for i = 1, #fields, 2 do f[fields[i]] = fields[i + 1] end
if not CALL.answer.from[f.state or ''] or (f.agent or '') == '' then return {} end
local now = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'state', CALL.answer.to, 'answered_at', ARGV[1])
if f.ewt_at_join then
  local joined = tonumber(f.enqueued_at) or now
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'uid', f.uid or '',
    'skill', f.skill or '', 'ewt', f.ewt_at_join, 'waited', tostring(now - joined))
end
return fields
