-- submit_job.lua: create a job and all its map tasks in one step, and place them: a job is
-- never half submitted. The chunks' payloads were staged beforehand in P .. 'job:<id>:input'
-- (chunk index -> payload JSON), which this call consumes.
--
-- KEYS[1]  hash    the job record, P .. 'job:' .. id
-- ARGV[1]  string  queue prefix P = "ballast:{queue}:"
-- ARGV[2]  string  job id
-- ARGV[3]  string  queue name
-- ARGV[4]  string  map kind
-- ARGV[5]  string  reduce kind
-- ARGV[6]  int     number of chunks (map tasks), >= 1
-- ARGV[7]  int     failed chunks tolerated before the job fails (0: fail on the first)
-- ARGV[8]  int     priority of the job's tasks
-- ARGV[9]  int     cost of each map task
-- ARGV[10] int     cost of the reduce task
-- ARGV[11] string  required tags, sorted and comma-joined
-- ARGV[12] int     max attempts of each task
-- ARGV[13] int     timeout of each attempt, ms
--
-- Map task ids are <job>-m<chunk>; the reduce task, made when the last map outcome is in,
-- is <job>-reduce. Returns {"ok"}, {"exists"} when the job id is taken, or {"missing", n}
-- when only n of the chunks were staged (nothing is written then).

local jk = KEYS[1]
local jid, queue, map_kind, reduce_kind = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local total, tolerate, priority = tonumber(ARGV[6]), ARGV[7], ARGV[8]
local cost, reduce_cost, tags, max_attempts, timeout_ms = ARGV[9], ARGV[10], ARGV[11], ARGV[12],
  ARGV[13]
local input = jk .. ':input'

if redis.call('EXISTS', jk) == 1 then return { 'exists' } end
local staged = redis.call('HLEN', input)
if staged ~= total then return { 'missing', staged } end

local now = now_ms()
redis.call('HSET', jk, 'id', jid, 'queue', queue, 'state', 'running', 'total', total,
  'done', 0, 'failed', 0, 'tolerate', tolerate, 'map_kind', map_kind,
  'reduce_kind', reduce_kind, 'priority', priority, 'cost', cost, 'reduce_cost', reduce_cost,
  'tags', tags, 'max_attempts', max_attempts, 'timeout_ms', timeout_ms, 'submitted_at', now)
redis.call('ZADD', key('jobs'), now, jid)
for i = 0, total - 1 do
  local tid = jid .. '-m' .. i
  new_task(tid, spec_of(max_attempts, timeout_ms, map_kind, nil, redis.call('HGET', input, i)),
    priority, cost, tags, now, now, { 'job', jid, 'chunk', i })
  redis.call('RPUSH', jk .. ':tasks', tid)
end
redis.call('DEL', input)
place(now)
return { 'ok' }
