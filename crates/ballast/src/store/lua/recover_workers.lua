-- recover_workers.lua: declare dead the workers whose last heartbeat (server time) is older
-- than the limit, hand their tasks to the living, and sweep orphans. Idempotent and safe
-- when every worker runs it at once: a second caller finds nothing left to do.
--
-- KEYS[1] zset    P .. 'heartbeats' (worker id -> last heartbeat, ms)
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] int     dead-after in milliseconds
-- ARGV[3] int     most workers declared dead in one call
--
-- Leases: a running task whose deadline (start + timeout, its score in P .. 'running') passed
-- more than dead-after ago was not stopped by its worker, which hangs while heartbeating. The
-- attempt is failed ("lease expired") and retried or dead-lettered, as a timeout would be;
-- the hung worker's late report is then stale.
--
-- Each recovery is logged, newest first, in P .. 'recoveries' (a list of JSON objects, the
-- last 100 kept). Orphans are assigned or running tasks whose worker is not registered: a
-- bounded ZSCAN step, its cursor kept in P .. 'sweep:<state>', at most once per dead-after
-- for the queue (P .. 'sweep:lock' expires then).
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

-- The sweep is a safety net (release_worker hands every task of a dead worker back in one
-- step): one step per dead-after for the whole queue is enough, whoever runs it, so most
-- calls skip it and an idle queue's recovery costs a few reads.
local sweep = redis.call('SET', key('sweep:lock'), '1', 'NX', 'PX', math.max(dead_after, 1))
for _, state in ipairs(sweep and { 'assigned', 'running' } or {}) do
  local cursor_key = key('sweep:' .. state)
  local cursor = redis.call('GET', cursor_key) or '0'
  local step = redis.call('ZSCAN', key(state), cursor, 'COUNT', 100)
  -- A finished scan leaves no cursor behind, so an idle step writes nothing.
  if step[1] == '0' then redis.call('DEL', cursor_key) else redis.call('SET', cursor_key, step[1]) end
  for i = 1, #step[2], 2 do
    local id = step[2][i]
    local w = redis.call('HGET', task_key(id), 'worker') or ''
    if redis.call('SISMEMBER', key('workers'), w) == 0 then
      requeue(id, w, now)
      back = back + 1
    end
  end
end

local expired = redis.call('ZRANGEBYSCORE', key('running'), '-inf', '(' .. fmt(limit),
  'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  local h = redis.call('HMGET', task_key(id), 'state', 'worker', 'cost', 'timeout_ms')
  if h[1] == 'running' then
    local w = h[2]
    if unhold(id, w, 'running', h[3]) then index_worker(w) end
    local err = 'lease expired: no report ' .. h[4] .. ' ms after the start, plus ' ..
      dead_after .. ' ms'
    end_attempt(id, w, 'retry', err, now, now)
    back = back + 1
  else
    redis.call('ZREM', key('running'), id)
  end
end
if back > 0 then place(now) end
return { #dead, back }
