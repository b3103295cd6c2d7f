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
-- failed). Every attempt is appended to the record's `history`.
-- Returns {"ok", claimed} or {"stale", {}} when the task is no longer running on this worker
-- under this lease (it was taken back): nothing is written then. `claimed` has the shape
-- claim_tasks.lua returns. Publishes the task id on P .. 'events' when it is final.

local tk = KEYS[1]
local w, id, lease, outcome, body = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local claim_max, delay = tonumber(ARGV[7]), tonumber(ARGV[8] or '0')

local h = redis.call('HMGET', tk, 'state', 'worker', 'lease', 'cost', 'attempts', 'max_attempts',
  'started_at')
if h[1] ~= 'running' or h[2] ~= w or h[3] ~= lease then return { 'stale', {} } end

local now = now_ms()
local attempts, max_attempts = tonumber(h[5]), tonumber(h[6])
redis.call('ZREM', key('running'), id)
redis.call('ZREM', key('deadlines'), id)
redis.call('SREM', held_key(w), id)
redis.call('HINCRBY', worker_key(w), 'assigned', -tonumber(h[4]))
redis.call('HINCRBY', worker_key(w), 'finished', 1)
redis.call('SREM', worker_key(w) .. ':cancel', id)
index_worker(w)

-- A retry with no attempts left is the task's last failure.
if outcome == 'retry' and attempts >= max_attempts then outcome = 'failed' end
local entry = { attempt = attempts, worker = w, started_at = tonumber(h[7]), finished_at = now,
  outcome = outcome }
if outcome ~= 'succeeded' then entry.error = body end
append_history(tk, entry)

if outcome == 'succeeded' then
  settle(id, 'succeeded', 'result', body, now)
elseif outcome == 'cancelled' then
  settle(id, 'cancelled', 'error', body, now)
elseif outcome == 'retry' then
  local due = now + delay
  redis.call('HSET', tk, 'state', 'scheduled', 'error', body, 'run_at', due)
  redis.call('ZADD', key('scheduled'), due, id)
else
  settle(id, 'failed', 'error', body, now)
end
place(now)

local claimed = {}
if claim_max > 0 and redis.call('HGET', worker_key(w), 'state') == 'active' then
  claimed = claim(w, {}, claim_max, now)
end
return { 'ok', claimed }
