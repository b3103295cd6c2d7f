-- finish_task.lua: record a task's outcome, free its cost, place what now fits, and hand the
-- worker its next tasks in the same round trip.
--
-- KEYS[1] hash    the task record, P .. 'task:' .. id
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  worker id
-- ARGV[3] string  task id
-- ARGV[4] int     lease (fencing token) the worker got with the task
-- ARGV[5] string  "succeeded" or "failed"
-- ARGV[6] string  result JSON (succeeded) or error message (failed)
-- ARGV[7] int     most tasks to claim for this worker afterwards (0 for none)
--
-- Returns {"ok", claimed} or {"stale", {}} when the task is no longer running on this worker
-- under this lease (it was taken back): nothing is written then. `claimed` has the shape
-- claim_tasks.lua returns. Publishes the task id on P .. 'events' when it is recorded.

local tk = KEYS[1]
local w, id, lease, outcome, body = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local claim_max = tonumber(ARGV[7])

local h = redis.call('HMGET', tk, 'state', 'worker', 'lease', 'cost')
if h[1] ~= 'running' or h[2] ~= w or h[3] ~= lease then return { 'stale', {} } end

local now = now_ms()
local field = 'result'
if outcome == 'failed' then field = 'error' end
redis.call('HSET', tk, 'state', outcome, 'finished_at', now, field, body)
redis.call('ZREM', key('running'), id)
redis.call('ZADD', key(outcome), now, id)
redis.call('SREM', held_key(w), id)
redis.call('HINCRBY', worker_key(w), 'assigned', -tonumber(h[4]))
redis.call('HINCRBY', worker_key(w), 'finished', 1)
index_worker(w)
redis.call('PUBLISH', key('events'), id)
place(now)

local claimed = {}
if claim_max > 0 and redis.call('HGET', worker_key(w), 'state') == 'active' then
  claimed = claim(w, {}, claim_max, now)
end
return { 'ok', claimed }
