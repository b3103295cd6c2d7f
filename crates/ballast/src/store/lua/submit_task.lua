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
local order = fmt((1000 - priority) * ORDER_SHIFT + redis.call('INCR', key('seq')))
redis.call('HSET', tk, 'id', id, 'queue', queue, 'kind', kind, 'payload', payload,
  'priority', priority, 'cost', cost, 'tags', tags, 'max_attempts', max_attempts,
  'timeout_ms', timeout_ms, 'state', 'pending', 'order', order, 'attempts', 0, 'lease', 0,
  'submitted_at', now)
local due = math.max(now + delay, not_before)
if due > now then
  redis.call('HSET', tk, 'state', 'scheduled', 'run_at', due)
  redis.call('ZADD', key('scheduled'), due, id)
  return { 'scheduled' }
end
redis.call('ZADD', key('pending'), order, id)
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
