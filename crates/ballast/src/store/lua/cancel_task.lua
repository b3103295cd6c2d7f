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
local h = redis.call('HMGET', tk, 'state', 'worker', 'cost')
local state, w = h[1], h[2]
if not state then return { 'unknown' } end
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  return { 'final', state }
end
if state == 'running' then
  redis.call('HSET', tk, 'cancel_requested', 1)
  redis.call('SADD', worker_key(w) .. ':cancel', id)
  return { 'requested', w }
end

local now = now_ms()
if state == 'pending' then
  redis.call('ZREM', key('pending'), id)
  redis.call('ZREM', key('parked'), id)
else
  redis.call('ZREM', key(state), id)
end
if state == 'assigned' then
  redis.call('LREM', inbox_key(w), 0, id)
  redis.call('SREM', held_key(w), id)
  redis.call('HINCRBY', worker_key(w), 'assigned', -tonumber(h[3]))
  index_worker(w)
end
settle(id, 'cancelled', 'error', 'cancelled before it started', now)
if state == 'assigned' then place(now) end
return { 'cancelled' }
