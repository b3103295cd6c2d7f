-- submit_tasks.lua: store new tasks of one queue, then place them (and anything else that
-- now fits) in one placement pass, so a batch shares the fixed cost of a call and of a
-- placement (submit_task.lua is the cheaper call for one task).
--
-- KEYS[1] zset    P .. 'pending' (routes the call on Cluster)
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] int     S, how many task shapes follow
-- then S shapes of five: priority, -1000..1000; cost, >= 1; required tags, sorted and
--                 comma-joined ("" for none); delay ms from now (Redis clock); not before
--                 this time (ms since the epoch; 0 for none)
-- then three per task: id, spec (max attempts, timeout, kind and payload, as lib.lua's
--                 spec_of() joins them), the number (1..S) of its shape
--
-- The tasks of a batch mostly share everything but their id and spec: each shape is sent
-- once, and Redis turns three arguments per task into Lua values instead of seven.
-- A task with a time still ahead waits in P .. 'scheduled' until promote_tasks.lua brings
-- it to pending. An id already stored is left as it is (a batch sent again does not
-- submit twice) and told where it went.
--
-- Returns two strings per task, flat: the placement ("assigned", "pending", "parked",
-- "scheduled" or, for a repeated id whose task ended, "finished") and the worker ("" unless
-- assigned).

local now = now_ms()
local shapes = {}
for s = 1, tonumber(ARGV[2]) do
  local o = 3 + (s - 1) * 5
  shapes[s] = { unpack(ARGV, o, o + 4) }
end
-- Sequence numbers are counted here and written back once (a duplicate takes none).
local seq = tonumber(redis.call('GET', key('seq')) or '0')
local first = seq
local b, replies, ids, costs, tags, orders, slot = new_batch(), {}, {}, {}, {}, {}, {}
for i = 3 + #shapes * 5, #ARGV, 3 do
  local id, spec, t = ARGV[i], ARGV[i + 1], shapes[num(ARGV[i + 2])]
  local status, order = submit_one(id, spec, t[1], t[2], t[3], t[4], t[5], now, b, seq + 1)
  local r = #replies + 1
  if status == 'exists' then
    replies[r], replies[r + 1] = existing_placement(id)
  else
    seq = seq + 1
    replies[r], replies[r + 1] = status or 'pending', ''
  end
  if not status then
    local k = #ids + 1
    ids[k], costs[k], tags[k], orders[k], slot[k] = id, t[2], t[3], order, r
  end
end
if seq > first then redis.call('SET', key('seq'), fmt(seq)) end
flush_batch(b)
local got = {}
place(now, nil, got)
for k, placed in ipairs(submitted_placements(ids, costs, tags, orders, got)) do
  replies[slot[k]] = placed
  if placed == 'assigned' then replies[slot[k] + 1] = got[ids[k]] end
end
return replies
