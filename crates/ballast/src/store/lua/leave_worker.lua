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

local now = now_ms()
local back = 0
if phase == 'remove' then
  back = release_worker(w, now)
else
  redis.call('HSET', wk, 'state', 'draining')
  index_worker(w)
  for _, id in ipairs(redis.call('SMEMBERS', held_key(w))) do
    if redis.call('HGET', task_key(id), 'state') == 'assigned' then
      requeue(id, w, now)
      back = back + 1
    end
  end
end
place(now)
return back
