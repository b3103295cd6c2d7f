-- submit_tasks.lua: submit_task.lua for a batch of tasks of one queue: each is stored, then
-- one placement pass places what fits, so a batch shares the fixed cost of a call and of
-- a placement.
--
-- KEYS[1] zset    P .. 'pending' (routes the call on Cluster)
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2..] ten per task: id, kind, payload, priority, cost, tags, max attempts,
--                 timeout ms, delay ms, not-before ms (as submit_task.lua takes them)
--
-- Returns one reply per task, as submit_task.lua's: {"assigned", worker} | {"pending"} |
-- {"parked"} | {"scheduled"} | {"exists"}.

local now = now_ms()
-- Sequence numbers are counted here and written back once (a duplicate takes none).
local seq = tonumber(redis.call('GET', key('seq')) or '0')
local first = seq
local b, replies, ids, costs, tags, orders, slot = new_batch(), {}, {}, {}, {}, {}, {}
for i = 2, #ARGV, 10 do
  local status, order = submit_one(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
    ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], now, b,
    seq + 1)
  if status ~= 'exists' then seq = seq + 1 end
  replies[#replies + 1] = status and { status } or false
  if not status then
    local k = #ids + 1
    ids[k], costs[k], tags[k], orders[k] = ARGV[i], ARGV[i + 4], ARGV[i + 5], order
    slot[k] = #replies
  end
end
if seq > first then redis.call('SET', key('seq'), fmt(seq)) end
flush_batch(b)
local got = {}
place(now, nil, got)
for k, reply in pairs(submitted_placements(ids, costs, tags, orders, got)) do
  replies[slot[k]] = reply
end
return replies
