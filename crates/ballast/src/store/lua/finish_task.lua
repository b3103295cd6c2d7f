-- finish_task.lua: record how an attempt ended, free its cost, place what now fits, and hand
-- the worker its next tasks in the same round trip.
--
-- KEYS[1] hash    the task record, P .. 'task:' .. id
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  worker id
-- ARGV[3] string  task id
-- ARGV[4] int     lease (fencing token) the worker got with the task
-- ARGV[5] string  "succeeded", "retry" (a failed attempt worth another), "failed" (give up)
--                 or "cancelled" (stopped on a cancel request)
-- ARGV[6] string  result JSON (succeeded) or error message
-- ARGV[7] int     most tasks to claim for this worker afterwards (0 for none)
-- ARGV[8] int     for "retry": milliseconds before the next attempt may start
--
-- A retry with attempts left waits in P .. 'scheduled' until its time (promote_tasks.lua
-- brings it back); a retry with none left, or a failure, goes to the dead letters (state
-- failed). Every attempt that does not succeed is appended to the record's `history`.
-- Returns {"ok", claimed} or {"stale", {}} when the task is no longer running on this worker
-- under this lease (it was taken back): nothing is written then. `claimed` has the shape
-- claim_tasks.lua returns. Publishes the task id on P .. 'events' when it is final.

local w, id, lease, outcome, body = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local claim_max, delay = tonumber(ARGV[7]), ARGV[8] or '0'

local now = now_ms()
local b = new_batch()
if not finish_one(w, id, lease, outcome, body, delay, now, b) then return { 'stale', {} } end
local active = finish_done(w, b, now) == 'active'
place(now)

local claimed = {}
if claim_max > 0 and active then claimed = claim(w, {}, claim_max, now) end
return { 'ok', claimed }
