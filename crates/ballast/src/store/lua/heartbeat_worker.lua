-- heartbeat_worker.lua: record that a worker is alive (server time), hand it the cancel
-- requests for its running tasks, and place anything that fits, as a safety net for work
-- left over by a capped placement.
--
-- KEYS[1] hash    the worker record, P .. 'worker:' .. id
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  worker id
-- ARGV[3] int     the epoch register_worker gave this process
--
-- Returns {1, id, ...}: alive, and the running tasks it was asked to cancel; or {0} when the
-- worker is unknown or registered under another epoch: it was declared dead (its tasks went
-- to others) and must drop its work and register again.
-- A request is told at every beat until its task leaves running (finish_done and unhold
-- take it out): a reply lost on the way, or a task the worker has not started yet when it
-- hears of it, must not lose the request. Acting on it twice is harmless.

local wk = KEYS[1]
local w, epoch = ARGV[2], ARGV[3]
if redis.call('HGET', wk, 'epoch') ~= epoch then return { '0' } end
local now = now_ms()
redis.call('HSET', wk, 'heartbeat_at', ts(now))
redis.call('ZADD', key('heartbeats'), ts(now), w)
place(now)
local out = { '1' }
for _, id in ipairs(redis.call('SMEMBERS', cancel_key(w))) do out[#out + 1] = id end
return out
