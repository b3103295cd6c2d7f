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

local tk, id = KEYS[1], ARGV[2]
local h = redis.call('HMGET', tk, 'state', 'worker')
if not h[1] then return { 'unknown' } end
local now = now_ms()
local done = cancel(id, now)
if done == 'final' then return { 'final', h[1] } end
if done == 'requested' then return { 'requested', h[2] } end
place(now)
return { 'cancelled' }
