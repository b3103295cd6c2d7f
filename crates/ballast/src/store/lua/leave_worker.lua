-- leave_worker.lua: a worker stops taking work ("drain") or leaves the queue ("remove").
--
-- KEYS[1] hash    the worker record, P .. 'worker:' .. id
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  worker id
-- ARGV[3] int     the epoch register_worker gave this process
-- ARGV[4] string  "drain": leave the free indexes and hand back tasks not yet started;
--                 "remove": also hand back anything still held and delete the worker
--
-- Handed-back tasks return to pending at their order without using an attempt, and are
-- placed on other workers at once. Returns the number of tasks handed back, or -1 when the
-- epoch is not the worker's: the process was declared dead (its tasks already went to
-- others) and perhaps replaced, so what is there now is not its to change.

local wk = KEYS[1]
local w, epoch, phase = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', wk, 'epoch') ~= epoch then return -1 end

local now = now_ms()
local back = 0
if phase == 'remove' then
  back = release_worker(w, now)
else
  redis.call('HSET', wk, 'state', 'draining')
  index_worker(w)
  local ids, assigned = held_ids(w)
  for i, id in ipairs(ids) do
    if assigned[i] and requeue(id, w, now) then back = back + 1 end
  end
end
place(now)
return back
