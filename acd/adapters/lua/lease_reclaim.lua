-- Take back an agent whose lease is over (lease_sweep.lua), step one of two. Checked again here,
-- atomically: the agent still holds that call and has held it for the whole lease (another
-- controller's sweep may have taken it back, and a claim given it the same caller again, since
-- this one looked). Then its call goes back to the front of its queue if it is still offered
-- to this agent, and leaves the hand-off list of its node (whose controller never took it). A
-- callback attempt that was originated already stays as it is: a callback is dialled at most
-- once, and its node's resync decides it from what Asterisk recorded. Step two, the agent's
-- RELEASE (agent_event.lua with the call), is the caller's, on a reply of 1.
-- ARGV: prefix, agent, call uid, now, lease seconds, then the held states.
-- Returns {1, the call's queue when it was put back else ''}, or {0, ''}: not expired.
local prefix, agent, uid, now, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local held = {}
for i = 6, #ARGV do held[ARGV[i]] = true end
local a = redis.call('HMGET', prefix .. ':agent:' .. agent, 'state', 'call', 'state_since')
if not held[a[1] or ''] or (a[2] or '') ~= uid or (tonumber(a[3]) or 0) > now - lease then
  return {0, ''}
end
local ckey = prefix .. ':call:' .. uid
local c = redis.call('HMGET', ckey, 'state', 'agent', 'skill', 'score', 'node', 'kind', 'trunk')
-- Offered only: a call found connected is talking, whatever its agent's record says.
if uid == '' or c[2] ~= agent or c[1] ~= CALL_STATE.offered then return {1, ''} end
if c[6] == 'callback' and (c[7] or '') ~= '' then return {1, ''} end
local skill = c[3]
requeue_front(prefix, ckey, uid, skill, tonumber(c[4]) or 0)
if (c[5] or '') ~= '' then redis.call('LREM', prefix .. ':connect:' .. c[5], 0, uid) end
return {1, skill}
