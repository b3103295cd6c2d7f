-- finish_tasks.lua: record how attempts of one worker's tasks ended, free their cost, place
-- what now fits, and hand the worker its next tasks in the same round trip. A worker reports
-- what ended since its last report in one call, so the fixed cost of a call and of a
-- placement pass is shared by all of them.
--
-- Outcomes: "succeeded"; "retry", a failed attempt worth another, which waits in
-- P .. 'scheduled' until its delay is over (promote_tasks.lua brings it back), or goes to
-- the dead letters (state failed) when no attempt is left; "failed", give up now;
-- "cancelled", stopped on a cancel request. Every attempt that does not succeed is appended
-- to the record's `history`; a final task's id is published on P .. 'events'.
--
-- KEYS[1] hash    the worker record, P .. 'worker:' .. id
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  worker id
-- ARGV[3] int     the epoch register_worker gave this process
-- ARGV[4] int     most tasks to claim for this worker afterwards (0 for none)
-- ARGV[5] int     S, how many successes follow
-- then S of four: id, lease, cost, result JSON (the common report goes without its outcome
--                 and delay: two arguments fewer a task, ~1,200 instructions each)
-- then the other reports, six each: id, lease, cost, outcome ("retry", "failed" or
--                 "cancelled"; "succeeded" is accepted too), error message, retry delay in ms
--
-- Outcomes are fenced by their leases alone: a result is as good from a process declared
-- dead as from any other, as long as its task was not taken back. The fence is the worker's
-- held set: it holds the token of each run (lease, cost and id), so one SREM answers for
-- every report of the call when it takes them all off (lib.lua's take_held()). Claiming is
-- fenced by the epoch too: a process whose epoch is no longer the worker's (declared dead,
-- perhaps replaced by a new process under the same id) claims nothing, or it would start
-- the new incarnation's tasks.
--
-- Returns {recorded, claimed}: recorded is the number of reports when each was recorded (the
-- usual answer, one integer however many there are), else a list: its i-th entry is 1, or
-- 0 when the i-th report (successes first) was stale (taken back, nothing written for it)
-- or repeated a report before it in the call; claimed has the shape claim_tasks.lua
-- returns.

local w, epoch, claim_max = ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_ms()
local b = new_batch()
local others = 6 + 4 * tonumber(ARGV[5])
local tokens, k = {}, 0
-- held_token(id, lease, cost), written out: this runs for every report.
for i = 6, others - 1, 4 do
  k = k + 1
  tokens[k] = ARGV[i + 1] .. ' ' .. ARGV[i + 2] .. ' ' .. ARGV[i]
end
for i = others, #ARGV, 6 do
  k = k + 1
  tokens[k] = ARGV[i + 1] .. ' ' .. ARGV[i + 2] .. ' ' .. ARGV[i]
end
-- true, or a list of 1 and 0.
local recorded = take_held(w, tokens)
local all = recorded == true
k = 0
-- b.done is replaced only by finish_done(), below; b.events and the succeeded list only by
-- its flush.
local done, events, succeeded, wins = b.done, b.events, nil, 0
local finished_at = ts(now)
for i = 6, others - 1, 4 do
  k = k + 1
  if all or recorded[k] == 1 then
    -- finish_one() and settle() for a success, written out: this runs for every task that
    -- succeeds.
    local id, result = ARGV[i], ARGV[i + 3]
    done[#done + 1] = id
    local cost = ARGV[i + 2]
    b.freed = b.freed + (INT[cost] or tonumber(cost))
    redis.call('HSET', P .. 'task:' .. id, 'state', 'succeeded', 'finished_at', finished_at,
      'result', result)
    if not succeeded then succeeded = batch_list(b, 'rpush', key('succeeded')) end
    succeeded[#succeeded + 1] = id
    events[#events + 1] = id
    wins = wins + 1
    if string.find(id, '-', 1, true) then job_task_settled(id, 'succeeded', result, now) end
  end
end
if wins > 0 then b.settled.succeeded = (b.settled.succeeded or 0) + wins end
for i = others, #ARGV, 6 do
  k = k + 1
  if all or recorded[k] == 1 then
    finish_one(w, ARGV[i], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], now, b)
  end
end
finish_done(w, b, now)
-- Tasks placed here start at once; then the inbox tops up the claim (tasks assigned to w
-- by other calls and not yet taken).
local me
if claim_max > 0 then
  local h = redis.call('HMGET', KEYS[1], 'state', 'epoch')
  if h[1] == 'active' and h[2] == epoch then me = { w = w, max = claim_max, out = {}, n = 0 } end
end
place(now, me)
local claimed = {}
if me then
  claimed = me.out
  if me.n < claim_max then claim(w, {}, claim_max - me.n, now, claimed) end
end
return { all and #tokens or recorded, claimed }
