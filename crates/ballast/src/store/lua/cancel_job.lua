-- cancel_job.lua: cancel a job: every task of it that has not ended is cancelled (running
-- ones are asked to stop), and the job ends cancelled.
--
-- KEYS[1] hash    the job record, P .. 'job:' .. id
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  job id
--
-- Returns {"cancelled"}, {"final", state} when the job had already ended, or {"unknown"}.

local state = redis.call('HGET', KEYS[1], 'state')
if not state then return { 'unknown' } end
if state ~= 'running' and state ~= 'reducing' then return { 'final', state } end
local now = now_ms()
end_job(ARGV[2], 'cancelled', 'error', 'cancelled on request', now)
place(now)
return { 'cancelled' }
