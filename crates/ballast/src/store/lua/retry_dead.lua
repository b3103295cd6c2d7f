-- retry_dead.lua: dead letters (failed tasks) go back to pending with fresh attempts; their
-- history is kept.
--
-- KEYS[1] zset    P .. 'failed'
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2..] string task ids
--
-- Returns the number of tasks revived (ids not among the dead letters are skipped).

local now = now_ms()
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local tk = task_key(id)
    local h = redis.call('HMGET', tk, 'run', 'order')
    -- Its lease and runs go on counting; its attempts start again.
    local lease, _, runs = run_of(h[1])
    redis.call('HSET', tk, 'state', 'pending', 'cut_short', 0, 'run', waiting_run(lease, 0, runs))
    -- A cancel request that came too late to stop the last run does not follow the task
    -- into its new life.
    redis.call('HDEL', tk, 'finished_at', 'error', 'result', 'assigned_at',
      'cancel_requested')
    redis.call('ZADD', key('pending'), h[2], id)
    n = n + 1
  end
end
if n > 0 then place(now) end
return n
