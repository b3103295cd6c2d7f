-- claim_tasks.lua: a worker takes tasks from its inbox and marks them running.
--
-- KEYS[1]  list    the worker's inbox, P .. 'worker:' .. id .. ':inbox'
-- ARGV[1]  string  queue prefix P = "ballast:{queue}:"
-- ARGV[2]  string  worker id
-- ARGV[3]  int     the epoch register_worker gave this process
-- ARGV[4]  int     most tasks to claim
-- ARGV[5..] string ids the worker already popped from its inbox (by a blocking wait)
--
-- Returns the claimed tasks flat, three strings each: the running held token ("<lease> <cost>
-- <id>"), the spec (lib.lua's spec_of(): max attempts, timeout, kind, "reduce" for a job's
-- reduce task, and payload) and the attempt's number; or
-- nothing when the epoch is not the worker's: a process declared dead claims nothing, and
-- ids it popped go back to the head of the inbox for the live incarnation.

local w, epoch, max = ARGV[2], ARGV[3], tonumber(ARGV[4])
local given = {}
for i = 5, #ARGV do given[#given + 1] = ARGV[i] end
if redis.call('HGET', worker_key(w), 'epoch') ~= epoch then
  -- Only an id still waiting for w goes back, and never twice: it may have been handed back
  -- and placed again (and even started) since this process popped it.
  for i = #given, 1, -1 do
    local id = given[i]
    local h = redis.call('HMGET', task_key(id), 'state', 'run')
    local _, _, _, _, held_by = run_of(h[2])
    if h[1] == 'assigned' and held_by == w and not redis.call('LPOS', KEYS[1], id) then
      redis.call('LPUSH', KEYS[1], id)
    end
  end
  return {}
end
return claim(w, given, max, now_ms())
