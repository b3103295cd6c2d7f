-- leave_worker.lua: a worker stops taking work ("drain") or leaves the queue ("remove").
--
-- KEYS[1] hash    the worker record, P .. 'worker:' .. id
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  worker id
-- ARGV[3] string  "drain": leave the free indexes and hand back tasks not yet started;
--                 "remove": also hand back anything still held and delete the worker
--
-- Handed-back tasks return to pending at their order without using an attempt, and are
-- placed on other workers at once. Returns the number of tasks handed back.

local wk = KEYS[1]
local w, phase = ARGV[2], ARGV[3]
if redis.call('EXISTS', wk) == 0 then return 0 end

redis.call('HSET', wk, 'state', 'draining')
index_worker(w)
local back = 0
for _, id in ipairs(redis.call('SMEMBERS', held_key(w))) do
  if phase == 'remove' or redis.call('HGET', task_key(id), 'state') == 'assigned' then
    requeue(id, w)
    back = back + 1
  end
end
if phase == 'remove' then
  redis.call('DEL', wk, inbox_key(w), held_key(w))
  redis.call('SREM', key('workers'), w)
  redis.call('ZREM', key('heartbeats'), w)
end
place(now_ms())
return back
