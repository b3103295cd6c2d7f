-- finish_tasks.lua: finish_task.lua for many tasks of one worker at once: every outcome
-- recorded, then one placement pass that starts the worker's next tasks. A worker
-- reports what ended since its last report in one call, so the fixed cost of a call and of
-- a placement pass is shared by all of them.
--
-- KEYS[1] hash    the worker record, P .. 'worker:' .. id
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  worker id
-- ARGV[3] int     most tasks to claim for this worker afterwards (0 for none)
-- ARGV[4..] five per task: id, lease, outcome ("succeeded", "retry", "failed",
--                 "cancelled"), result JSON or error message, retry delay in ms
--
-- Returns {recorded, claimed}: recorded[i] is 1, or 0 when task i was stale (taken back,
-- nothing written for it); claimed has the shape claim_tasks.lua returns.

local w, claim_max = ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local recorded, b = {}, new_batch()
for i = 4, #ARGV, 5 do
  local ok = finish_one(w, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], now,
    b)
  recorded[#recorded + 1] = ok and 1 or 0
end
local state = finish_done(w, b, now)
-- Tasks placed here start at once; then the inbox tops up the claim (tasks assigned to w
-- by other calls and not yet taken).
local me
if claim_max > 0 and state == 'active' then
  me = { w = w, max = claim_max, out = {} }
end
place(now, me)
local claimed = {}
if me then
  claimed = me.out
  if #claimed < claim_max then
    for _, t in ipairs(claim(w, {}, claim_max - #claimed, now)) do claimed[#claimed + 1] = t end
  end
end
return { recorded, claimed }
