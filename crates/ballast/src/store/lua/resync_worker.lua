-- resync_worker.lua: a worker that lost the reply of a call that starts tasks (its
-- connection dropped mid-call: a claim, a finish, or the blocking pop of its inbox) cannot
-- know what that call did. This tells it: tasks assigned to it that left its inbox without
-- being claimed are claimed now, and every task running on it is returned; the worker
-- starts those it does not know.
--
-- KEYS[1] set     the tasks the worker holds, P .. 'worker:' .. id .. ':tasks'
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  worker id
-- ARGV[3] int     the epoch register_worker gave this process
--
-- Returns the running tasks flat, in the shape claim_tasks.lua returns, or nothing when the
-- epoch is not the worker's: a process declared dead must not take the tasks of the one
-- that replaced it.

local w = ARGV[2]
if redis.call('HGET', worker_key(w), 'epoch') ~= ARGV[3] then return {} end
local now = now_ms()
local held, popped = held_ids(w), {}
for _, id in ipairs(held) do
  if redis.call('HGET', task_key(id), 'state') == 'assigned'
    and not redis.call('LPOS', inbox_key(w), id) then
    popped[#popped + 1] = id
  end
end
if #popped > 0 then claim(w, popped, #popped, now) end
local out = {}
for _, id in ipairs(held) do
  local h = redis.call('HMGET', task_key(id), 'state', 'worker', 'cost', unpack(START_FIELDS))
  if h[1] == 'running' and h[2] == w then
    -- h[4 ..] are START_FIELDS: lease, then attempts (this attempt's number).
    claimed_row(out, id, h, 4, h[3], h[4], h[5])
  end
end
return out
