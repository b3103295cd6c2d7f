-- register_worker.lua: a worker joins the queue with a capacity and tags; its free capacity
-- is indexed, parked tasks get another chance, and whatever now fits is placed.
--
-- KEYS[1] hash    the worker record, P .. 'worker:' .. id (routes the call on Cluster)
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2] string  worker id
-- ARGV[3] int     capacity in units, 1..1000000
-- ARGV[4] string  tags, sorted and comma-joined ("" for none)
-- ARGV[5] int     dead-after in milliseconds: an existing record with the same id whose last
--                 heartbeat is older than this belongs to a dead process and is replaced
--
-- Returns {"ok", placed, epoch} or {"taken"} when a live worker already uses the id.

local wk = KEYS[1]
local w, capacity, tags, dead_after = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local now = now_ms()

if redis.call('EXISTS', wk) == 1 then
  local beat = tonumber(redis.call('HGET', wk, 'heartbeat_at')) or 0
  if now - beat < dead_after then return { 'taken' } end
  -- A previous process with this id died: hand its tasks back before taking the id over.
  release_worker(w, now)
end

-- The epoch fences this incarnation: a process that was declared dead and comes back
-- presents an old epoch and is told it is gone.
local epoch = redis.call('INCR', key('epoch'))
redis.call('HSET', wk, 'id', w, 'capacity', capacity, 'assigned', 0, 'tags', tags,
  'state', 'active', 'tick', 0, 'finished', 0, 'registered_at', now, 'heartbeat_at', now,
  'epoch', epoch)
redis.call('SADD', key('workers'), w)
redis.call('ZADD', key('heartbeats'), now, w)
redis.call('ZADD', cap_key(), capacity, w)
for _, t in ipairs(split_tags(tags)) do redis.call('ZADD', cap_key(t), capacity, w) end
index_worker(w)
unpark_all()
return { 'ok', tostring(place(now)), tostring(epoch) }
