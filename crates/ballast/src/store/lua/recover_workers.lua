-- recover_workers.lua: declare dead the workers whose last heartbeat (server time) is older
-- than the limit, hand their tasks to the living, and sweep orphans. Idempotent and safe
-- when every worker runs it at once: a second caller finds nothing left to do.
--
-- KEYS[1] zset    P .. 'heartbeats' (worker id -> last heartbeat, ms)
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] int     dead-after in milliseconds
-- ARGV[3] int     most workers declared dead in one call
--
-- Leases: a running task whose deadline (started_at + timeout_ms) passed more than
-- dead-after ago was not stopped by its worker, which hangs while heartbeating. The attempt
-- is failed ("lease expired") and retried or dead-lettered, as a timeout would be; the hung
-- worker's late report is then stale. P .. 'leases' scores each worker with running tasks
-- no later than their earliest deadline: when that comes due, the worker's held tasks are
-- read, the expired ones failed, and the entry set to the earliest deadline left (or
-- dropped). So a worker's tasks are read about once per timeout, not once per task.
--
-- Each recovery is logged, newest first, in P .. 'recoveries' (a list of JSON objects, the
-- last 100 kept). Orphans are assigned tasks whose worker is not registered, and the tasks
-- held by an unregistered worker that still has a leases entry: a bounded ZSCAN step of each
-- index, its cursor kept in P .. 'sweep:<index>', at most once per dead-after for the queue
-- (P .. 'sweep:lock' expires then).
-- Returns {workers declared dead, tasks handed back}.

local dead_after, max_workers = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()
local limit = now - dead_after

local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. fmt(limit), 'LIMIT', 0,
  max_workers)
local back = 0
for _, w in ipairs(dead) do
  local beat = tonumber(redis.call('ZSCORE', KEYS[1], w))
  local n = release_worker(w, now)
  back = back + n
  redis.call('LPUSH', key('recoveries'), cjson.encode({
    worker = w, reason = 'no heartbeat for ' .. (now - beat) .. ' ms',
    heartbeat_at = beat, declared_dead_at = now, tasks_requeued = n }))
  redis.call('LTRIM', key('recoveries'), 0, 99)
end

-- One bounded step of a ZSCAN over `index`, `visit` called with each member.
local function sweep_step(index, visit)
  local cursor_key = key('sweep:' .. index)
  local cursor = redis.call('GET', cursor_key) or '0'
  local step = redis.call('ZSCAN', key(index), cursor, 'COUNT', 100)
  -- A finished scan leaves no cursor behind, so an idle step writes nothing.
  if step[1] == '0' then
    redis.call('DEL', cursor_key)
  else
    redis.call('SET', cursor_key, step[1])
  end
  for i = 1, #step[2], 2 do visit(step[2][i]) end
end

local function registered(w) return redis.call('SISMEMBER', key('workers'), w) == 1 end

-- The sweep is a safety net (release_worker hands every task of a dead worker back in one
-- step): one step per dead-after for the whole queue is enough, whoever runs it, so most
-- calls skip it and an idle queue's recovery costs a few reads.
if redis.call('SET', key('sweep:lock'), '1', 'NX', 'PX', math.max(dead_after, 1)) then
  sweep_step('assigned', function(id)
    local _, _, _, _, w = run_of(redis.call('HGET', task_key(id), 'run'))
    if not registered(w) and requeue(id, w, now) then back = back + 1 end
  end)
  -- An unregistered worker with an entry here left tasks behind: release what is left of it.
  sweep_step('leases', function(w)
    if not registered(w) then back = back + release_worker(w, now) end
  end)
end

-- Workers whose earliest lease may have expired, each checked task by task. One call takes
-- the held tasks of as many as fit in LEASE_READS (at least one worker; a running task's
-- record is read, an assigned one's token is enough); the others stay due for the next
-- call.
local LEASE_READS = 1000
local due = redis.call('ZRANGEBYSCORE', leases_key(), '-inf', '(' .. fmt(limit), 'LIMIT', 0,
  100)
local read = 0
for _, w in ipairs(due) do
  if read >= LEASE_READS then break end
  -- Assigned tasks have no lease running: their tokens say so without a read.
  local ids, assigned = held_ids(w)
  read = read + #ids
  local soonest, freed = nil, false
  for i, id in ipairs(ids) do
    if not assigned[i] then
      local h = redis.call('HMGET', task_key(id), 'state', 'run', 'cost', 'spec')
      local lease, _, _, started, held_by = run_of(h[2])
      if h[1] == 'running' and held_by == w then
        local timeout = timeout_of(h[4])
        local deadline = tonumber(started) + timeout
        if deadline < limit then
          freed = unhold(id, w, 'running', h[3], str(lease)) or freed
          local err = 'lease expired: no report ' .. str(timeout) ..
            ' ms after the start, plus ' .. dead_after .. ' ms'
          end_attempt(id, w, 'retry', err, now, now)
          back = back + 1
        elseif not soonest or deadline < soonest then
          soonest = deadline
        end
      end
    end
  end
  if freed then index_worker(w) end
  if soonest then
    redis.call('ZADD', leases_key(), fmt(soonest), w)
  else
    redis.call('ZREM', leases_key(), w)
  end
end
if back > 0 then place(now) end
return { #dead, back }
