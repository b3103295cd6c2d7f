-- cancel_task.lua: cancel a task. One that has not started is cancelled at once; a running
-- one is flagged, and its worker (told with its next heartbeat) stops the handler and
-- reports it cancelled.
--
-- KEYS[1] hash    the task record, P .. 'task:' .. id
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  task id
--
-- A running task's id goes to its worker's P .. 'worker:' .. w .. ':cancel' set.
-- Returns {"cancelled"} | {"requested", worker} | {"final", state} | {"unknown"}.

local id = ARGV[2]
local now = now_ms()
local done, state, w = cancel(id, now)
if not state then return { 'unknown' } end
if done == 'final' then return { 'final', state } end
if done == 'requested' then return { 'requested', w } end
place(now)
return { 'cancelled' }
