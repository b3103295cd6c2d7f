-- heartbeat_worker.lua: record that a worker is alive (server time) and place anything that
-- fits, as a safety net for work left over by a capped placement.
--
-- KEYS[1] hash    the worker record, P .. 'worker:' .. id
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  worker id
--
-- Returns 1, or 0 when the worker is unknown (it was removed and must register again).

local wk = KEYS[1]
local w = ARGV[2]
if redis.call('EXISTS', wk) == 0 then return 0 end
local now = now_ms()
redis.call('HSET', wk, 'heartbeat_at', now)
redis.call('ZADD', key('heartbeats'), now, w)
place(now)
return 1
