-- promote_tasks.lua: tasks whose time has come (delayed submits, retries after backoff) go
-- from scheduled back to pending at their order, and are placed. Idempotent: every worker
-- runs it; a task is promoted by exactly one call.
--
-- KEYS[1] zset    P .. 'scheduled' (task id -> ms when it may run)
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] int     most tasks promoted in one call
--
-- Returns {promoted, ms until the next scheduled task or -1 when there is none}.

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local tk = task_key(id)
  local h = redis.call('HMGET', tk, 'order', 'run')
  redis.call('ZADD', key('pending'), h[1], id)
  -- A delayed submit has never run; a retry keeps its counts.
  if h[2] then
    redis.call('HSET', tk, 'state', 'pending', 'run', waiting_run(run_of(h[2])))
  else
    redis.call('HSET', tk, 'state', 'pending')
  end
  redis.call('HDEL', tk, 'run_at', 'assigned_at')
end
if #due > 0 then place(now) end
local next_at = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #next_at == 0 then return { #due, -1 } end
return { #due, math.max(0, tonumber(next_at[2]) - now) }
