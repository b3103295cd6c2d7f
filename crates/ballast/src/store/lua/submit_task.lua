-- submit_task.lua: store a new task and place it (and anything else that now fits).
--
-- KEYS[1]  hash    the task record, P .. 'task:' .. id (routes the call on Cluster)
-- ARGV[1]  string  queue prefix P = "ballast:{queue}:"; every other key is built from it
-- ARGV[2]  string  task id
-- ARGV[3]  string  spec: max attempts, timeout, kind and payload, as lib.lua's spec_of()
--                  joins them
-- ARGV[4]  int     priority, -1000..1000
-- ARGV[5]  int     cost, >= 1
-- ARGV[6]  string  required tags, sorted and comma-joined ("" for none)
-- ARGV[7]  int     delay in milliseconds from now (Redis clock), 0 for none
-- ARGV[8]  int     not before this time (ms since the epoch), 0 for none
--
-- submit_tasks.lua does the same for many tasks. A single submit has a function of its
-- own because a batch's bookkeeping (its tables and the batched index writes) costs more
-- than a third again of this whole call when the batch holds one task.
--
-- A task with a time still ahead waits in P .. 'scheduled' until promote_tasks.lua brings
-- it to pending. An id already stored is left as it is (a submit sent again after its reply
-- was lost does not submit twice) and told where it went.
-- Returns {placement, worker}: "assigned" and the worker, or "pending", "parked",
-- "scheduled" or (a repeated id whose task ended) "finished", and "".

local now = now_ms()
local status, order = submit_one(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7],
  ARGV[8], now)
if status == 'exists' then return { existing_placement(ARGV[2]) } end
if status then return { status, '' } end
local got = {}
place(now, nil, got)
local placed = submitted_placements({ ARGV[2] }, { ARGV[5] }, { ARGV[6] }, { order }, got)[1]
return { placed, got[ARGV[2]] or '' }
