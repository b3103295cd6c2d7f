-- resync_worker.lua: a worker that lost the reply of a call that starts tasks (its
-- connection dropped mid-call: a claim, a finish, or the blocking pop of its inbox) cannot
-- know what that call did. This tells it: tasks assigned to it that left its inbox without
-- being claimed are claimed now, and every task running on it is returned; the worker
-- starts those it does not know.
--
-- KEYS[1] set     the worker's held tasks' tokens, P .. 'worker:' .. id .. ':tasks'
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
-- The held tokens tell assigned tasks from running ones without a read of each.
local held, assigned, tokens = held_ids(w)
local popped, out = {}, {}
for i, id in ipairs(held) do
  if assigned[i] and not redis.call('LPOS', inbox_key(w), id) then popped[#popped + 1] = id end
end
-- What this claims (and anything it pops from the inbox in place of a task gone meanwhile)
-- is appended to out.
if #popped > 0 then claim(w, popped, #popped, now, out) end
for i, id in ipairs(held) do
  if not assigned[i] then
    local h = redis.call('HMGET', task_key(id), 'state', 'run', 'spec')
    local _, attempts, _, _, held_by = run_of(h[2])
    if h[1] == 'running' and held_by == w then
      -- Its token is the one it is held under; a running task's attempts count this run.
      claimed_row(out, tokens[i], h[3], str(attempts))
    end
  end
end
return out
