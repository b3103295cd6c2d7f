-- submit_task.lua: store a new task and place it (and anything else that now fits).
--
-- KEYS[1]  hash    the task record, P .. 'task:' .. id (routes the call on Cluster)
-- ARGV[1]  string  queue prefix P = "ballast:{queue}:"; every other key is built from it
-- ARGV[2]  string  task id
-- ARGV[3]  string  queue name
-- ARGV[4]  string  kind (handler name)
-- ARGV[5]  string  payload (JSON text)
-- ARGV[6]  int     priority, -1000..1000
-- ARGV[7]  int     cost, >= 1
-- ARGV[8]  string  required tags, sorted and comma-joined ("" for none)
-- ARGV[9]  int     max attempts
-- ARGV[10] int     timeout in milliseconds
-- ARGV[11] int     delay in milliseconds from now (Redis clock), 0 for none
-- ARGV[12] int     not before this time (ms since the epoch), 0 for none
--
-- A task with a time still ahead waits in P .. 'scheduled' until promote_tasks.lua brings
-- it to pending.
-- Returns {"assigned", worker} | {"pending"} | {"parked"} | {"scheduled"}, or {"exists"}
-- when the id is taken (so a retried batch does not submit twice).

local tk = KEYS[1]
local id, queue, kind, payload = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local priority, cost, tags = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local max_attempts, timeout_ms = ARGV[9], ARGV[10]
local delay, not_before = tonumber(ARGV[11] or '0'), tonumber(ARGV[12] or '0')

if redis.call('EXISTS', tk) == 1 then return { 'exists' } end

local now = now_ms()
local due = math.max(now + delay, not_before)
local order = new_task(id, queue, kind, payload, priority, cost, tags, max_attempts, timeout_ms,
  due, now, nil)
if due > now then return { 'scheduled' } end
place(now)

local h = redis.call('HMGET', tk, 'state', 'worker')
if h[1] == 'assigned' then return { 'assigned', h[2] } end
if redis.call('ZSCORE', key('parked'), id) then return { 'parked' } end
-- place() does not run while every worker is full; a task no live worker could ever run is
-- parked here all the same, so `parked` means the same whatever the load. With no worker
-- at all it stays pending: there is nothing yet to be incapable of running it.
if redis.call('EXISTS', cap_key()) == 1 and not capable(tonumber(cost), split_tags(tags)) then
  redis.call('ZREM', key('pending'), id)
  redis.call('ZADD', key('parked'), order, id)
  return { 'parked' }
end
return { 'pending' }
