-- claim_tasks.lua: a worker takes tasks from its inbox and marks them running.
--
-- KEYS[1]  list    the worker's inbox, P .. 'worker:' .. id .. ':inbox'
-- ARGV[1]  string  queue prefix P = "ballast:{queue}:"
-- ARGV[2]  string  worker id
-- ARGV[3]  int     most tasks to claim
-- ARGV[4..] string ids the worker already popped from its inbox (by a blocking wait)
--
-- Returns a list of {id, kind, payload, lease, cost, timeout_ms, max_attempts, attempt}.

local w, max = ARGV[2], tonumber(ARGV[3])
local given = {}
for i = 4, #ARGV do given[#given + 1] = ARGV[i] end
return claim(w, given, max, now_ms())
