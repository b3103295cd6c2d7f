-- lib.lua: the shared code of ballast's function library (store/library.rs builds the
-- library from it and one function per body in this folder).
--
-- It holds what must be written once: key names, server time, the one placement routine
-- that every function changing supply or demand calls, the batches that gather index
-- writes, and the task life cycle steps (start, finish, settle, requeue, cancel).
--
-- Every function receives the queue prefix as ARGV[1]: "ballast:{<queue>}:", and stores it
-- in P before anything else runs (store/library.rs wraps each body so, and calls
-- first_call() there too). All keys below are built from it, so they carry the queue's
-- hash tag and live in one Redis Cluster slot.
-- KEYS[1] of every function is a key under the same prefix, so Cluster routes the call
-- there.

local P

-- The standard functions, kept as upvalues of the library (see first_call()). A function's
-- globals table is empty: every global read (`redis`, `tonumber`, `string`...) misses it and
-- then goes through its metatable to the real globals, several table reads each time.
-- globals() is defined before the locals that shadow those names, so it reads the globals.
-- While the library loads, `redis` is the loader's own (the bodies below register with it).
local function globals()
  return redis, tonumber, tostring, string, math, unpack, table, cjson, ipairs, pairs
end
local redis = redis
local tonumber, tostring, string, math, unpack, table, cjson, ipairs, pairs

-- Look-ahead: how many blocked task shapes (tags and cost) one placement call steps over
-- before it stops, and how many waiting tasks it steps over at most. Together they bound the
-- work of one call while letting small tasks go around large ones that fit nowhere yet.
local LOOKAHEAD = 32
local MAX_SCAN = 256
-- Workers examined (in pages of 8) when looking for one that fits a task; bounds the work a
-- task with tags can cost when the most-free workers lack its tags.
local SCAN = 256
-- Tasks placed by one call at most: Redis runs a function call alone, so one call must stay
-- short. Whatever is left is placed by the next finish or heartbeat.
local MAX_PLACE = 1000
-- Free-capacity index score: free * SHIFT + tie-break. Capacity is at most 1,000,000 (< 2^20)
-- so the score stays below 2^52 and is exact as a double. The tie-break favours the worker
-- that was assigned least recently, so equal workers share work evenly.
local SHIFT = 4294967296
-- Pending order score: (1000 - priority) * 2^40 + sequence. Priority is -1000..1000, so the
-- highest priority sorts first and equal priorities keep submission order.
local ORDER_SHIFT = 1099511627776

local function key(name) return P .. name end
local function task_key(id) return P .. 'task:' .. id end
local function worker_key(w) return P .. 'worker:' .. w end
local function inbox_key(w) return P .. 'worker:' .. w .. ':inbox' end
-- The tasks w holds, one token each: "<lease> <cost> <id>" while running, the same with an
-- "a" in front while assigned. A token names the run, not just the task, so a finish is
-- fenced by one batched SREM of its reports' tokens instead of a read of each task's
-- record (take_held()), and the cost it frees comes with it. Lease and cost are digits, so
-- the id (whatever it holds) is the rest.
local function held_key(w) return P .. 'worker:' .. w .. ':tasks' end
-- `lease` and `cost` as text; `assigned`: not started yet.
local function held_token(id, lease, cost, assigned)
  if assigned then return 'a' .. lease .. ' ' .. cost .. ' ' .. id end
  return lease .. ' ' .. cost .. ' ' .. id
end
-- The ids of w's held tasks, whether each is assigned (not started), and their tokens.
-- Something that is not a token counts as its own id, so a stray member can never end the
-- list early.
local function held_ids(w)
  local tokens = redis.call('SMEMBERS', held_key(w))
  local ids, assigned = {}, {}
  for i, t in ipairs(tokens) do
    local a, id = string.match(t, '^(a?)%d+ %d+ (.*)$')
    ids[i], assigned[i] = id or t, a == 'a'
  end
  return ids, assigned, tokens
end
-- The running tasks w was asked to cancel.
local function cancel_key(w) return P .. 'worker:' .. w .. ':cancel' end
-- Lease deadlines: each worker with running tasks, scored no later than the earliest
-- deadline among them (recover_workers.lua tells the exact one when it comes due). One entry
-- per worker rather than one per task: a drained task then pays no index write for its
-- deadline, and the index is written once per call that starts tasks.
local function leases_key() return P .. 'leases' end
-- How many tasks are running in the queue (no index lists them: each worker's held set and
-- the records tell which).
local function running_count_key() return P .. 'running_count' end
-- Free-capacity index of all accepting workers, or of those carrying one tag.
local function free_key(tag)
  if tag then return P .. 'free:' .. tag end
  return P .. 'free'
end
-- Capacity index (score = capacity) of all accepting workers, or of those with one tag.
local function cap_key(tag)
  if tag then return P .. 'cap:' .. tag end
  return P .. 'cap'
end

-- A whole number as text. '%d' formats through the integer path of sprintf, half the cost
-- of '%.0f' (and of passing the number itself, which Redis formats as a double). Every
-- number ballast stores is below 2^53.
local function fmt(n) return string.format('%d', n) end

-- Small whole numbers as text and back: Lua turns a number into text through sprintf and
-- text into a number through strtod, and either costs more than the Redis command that
-- carries it. The hot paths convert the same few small values (attempts, costs, leases,
-- delays) for every task.
local STR, INT = {}, {}

-- Runs first in every call (store/library.rs's wrapper calls it) and does its work once:
-- a library's top level runs without the standard functions, so they and the small numbers
-- are set up by the first call.
local function first_call()
  if STR[0] then return end
  redis, tonumber, tostring, string, math, unpack, table, cjson, ipairs, pairs = globals()
  for i = 0, 4096 do
    STR[i] = string.format('%d', i)
    INT[STR[i]] = i
  end
end
local function num(s) return INT[s] or tonumber(s) end
local function str(n) return STR[n] or fmt(n) end

-- The count goes when it reaches zero, as an empty index would.
local function running_add(n)
  local k = running_count_key()
  if redis.call('INCRBY', k, fmt(n)) == 0 then redis.call('DEL', k) end
end

-- `now` as text, formatted once per call: Redis formats every number Lua passes it,
-- and the hot paths pass the time several times per task.
local now_text, now_of_text = '', nil
local function ts(now)
  if now ~= now_of_text then now_text, now_of_text = fmt(now), now end
  return now_text
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Index writes gathered while a call walks over many tasks and sent at the end as one
-- command per key: from Lua a Redis command costs more to call than the work it does, so a
-- batch of tasks costs a few calls per batch plus one or two per task (its own record).
-- A batch is only ever read back after flush_batch(); within one batch a member is never
-- both added to and removed from the same key.
local BATCH_ARGS = 1000

-- A batch makes its lists only when they are first used, and a flush that sent nothing makes
-- no new tables: a call makes a few batches, and every Lua table costs about as much as a
-- Redis command (made, grown, collected). The lists are b[kind][k] (kind: a key of
-- BATCH_COMMAND); `kinds` and `keys` remember the order they were first used in;
-- `finished` is settle()'s cache of the finished lists' own lists, reset with them.
local function new_batch()
  return { kinds = {}, keys = {}, events = {}, settled = {}, done = {}, freed = 0,
    soonest = {}, running = 0, finished = {} }
end

-- The list b[kind][k], made when first asked for. A list left empty sends nothing.
local function batch_list(b, kind, k)
  local by_key = b[kind]
  if not by_key then
    by_key = {}
    b[kind] = by_key
  end
  local t = by_key[k]
  if not t then
    t = {}
    by_key[k] = t
    local n = #b.kinds + 1
    b.kinds[n], b.keys[n] = kind, k
  end
  return t
end

-- Appends `v` (and `v2`: ZADD takes a score and a member) to the list b[kind][k].
local function later(b, kind, k, v, v2)
  local t = batch_list(b, kind, k)
  t[#t + 1] = v
  if v2 ~= nil then t[#t + 1] = v2 end
end

local BATCH_COMMAND = { zadd = 'ZADD', zrem = 'ZREM', sadd = 'SADD', srem = 'SREM',
  rpush = 'RPUSH' }

local function flush_batch(b)
  local kinds, keys = b.kinds, b.keys
  if #kinds > 0 then
    for i = 1, #kinds do
      local kind, k = kinds[i], keys[i]
      local t = b[kind][k]
      -- ZADD takes pairs: keep chunks even.
      for j = 1, #t, BATCH_ARGS do
        redis.call(BATCH_COMMAND[kind], k, unpack(t, j, math.min(j + BATCH_ARGS - 1, #t)))
      end
    end
    for i = 1, #kinds do b[kinds[i]] = nil end
    b.kinds, b.keys, b.finished = {}, {}, {}
  end
  -- LT: a worker's entry only ever moves earlier here; it is a bound, not the exact value.
  local soonest = false
  for w, d in pairs(b.soonest) do
    redis.call('ZADD', leases_key(), 'LT', fmt(d), w)
    soonest = true
  end
  if soonest then b.soonest = {} end
  if b.running ~= 0 then
    running_add(b.running)
    b.running = 0
  end
  if #b.events > 0 then
    redis.call('PUBLISH', key('events'), table.concat(b.events, ' '))
    b.events = {}
  end
end

local NO_TAGS = {}

-- The tags of a comma-joined list. The result is read, never changed: no tags share one
-- table.
local function split_tags(s)
  if not s or s == '' then return NO_TAGS end
  local out = {}
  for t in string.gmatch(s, '[^,]+') do out[#out + 1] = t end
  return out
end

-- Tag membership comes from the tag's free index: a worker carries tag t while it accepts
-- work exactly when it is a member of free:t.
local function has_tags(w, tags, from)
  for i = from, #tags do
    if not redis.call('ZSCORE', free_key(tags[i]), w) then return false end
  end
  return true
end

-- Re-score worker w in the free indexes (or drop it from them when it no longer accepts).
local function index_worker(w)
  local h = redis.call('HMGET', worker_key(w), 'capacity', 'assigned', 'tick', 'tags', 'state')
  local tags = split_tags(h[4])
  if h[5] ~= 'active' then
    redis.call('ZREM', free_key(), w)
    redis.call('ZREM', cap_key(), w)
    for _, t in ipairs(tags) do
      redis.call('ZREM', free_key(t), w)
      redis.call('ZREM', cap_key(t), w)
    end
    return
  end
  local free = tonumber(h[1]) - tonumber(h[2])
  local score = fmt(free * SHIFT + (SHIFT - 1 - (tonumber(h[3]) % SHIFT)))
  redis.call('ZADD', free_key(), score, w)
  for _, t in ipairs(tags) do redis.call('ZADD', free_key(t), score, w) end
end

-- The largest free capacity of any accepting worker.
local function max_free()
  local top = redis.call('ZREVRANGE', free_key(), 0, 0, 'WITHSCORES')
  if #top == 0 then return 0 end
  return math.floor(tonumber(top[2]) / SHIFT)
end

-- Is a worker usable for the task identified by `id`? A worker reserved for another blocked
-- task is not.
local function usable(w, reserved, id)
  local r = reserved[w]
  return r == nil or r == id
end

-- The accepting worker with the most free capacity that fits `cost` and carries `tags`.
local function best_fit(cost, tags, reserved, id)
  local idx = free_key(tags[1])
  local min = fmt(cost * SHIFT)
  for off = 0, SCAN - 1, 8 do
    local ws = redis.call('ZREVRANGEBYSCORE', idx, '+inf', min, 'LIMIT', off, 8)
    for _, w in ipairs(ws) do
      if usable(w, reserved, id) and has_tags(w, tags, 2) then return w end
    end
    if #ws < 8 then return nil end
  end
  return nil
end

-- For a task that fits nowhere now: the eligible worker, large enough once it drains, with
-- the most free capacity. Reserving it (no smaller task goes there during this call) means
-- its free capacity can only grow, so the blocked task is placed as soon as it fits.
local function reserve_for(cost, tags, reserved)
  local idx = free_key(tags[1])
  for off = 0, SCAN - 1, 8 do
    local ws = redis.call('ZREVRANGE', idx, off, off + 7)
    for _, w in ipairs(ws) do
      if reserved[w] == nil and has_tags(w, tags, 2)
        and tonumber(redis.call('HGET', worker_key(w), 'capacity')) >= cost then
        return w
      end
    end
    if #ws < 8 then return nil end
  end
  return nil
end

-- Could any accepting worker ever run the task (capacity and tags)? Answers true when the
-- scan bound is reached, so that a task is never parked by mistake.
local function capable(cost, tags)
  local idx = cap_key(tags[1])
  for off = 0, SCAN - 1, 8 do
    local ws = redis.call('ZREVRANGE', idx, off, off + 7, 'WITHSCORES')
    for i = 1, #ws, 2 do
      if tonumber(ws[i + 1]) < cost then return false end
      if has_tags(ws[i], tags, 2) then return true end
    end
    if #ws < 16 then return false end
  end
  return true
end

-- A task's `run`: what its placements and starts change, in one field, so that a start
-- writes one field instead of five and a placement reads one instead of three:
-- "<lease> <attempts> <runs> <started_at> <worker>". lease: its latest placement's fencing
-- token; attempts: the attempts used; runs: the times a worker started it, every run
-- counted; started_at: when its current (or last) run started, "-" while it has not;
-- worker: where it is placed or ran last, empty while it waits. A task never placed has
-- none. Every part but the worker is digits or "-", so the worker (whatever it holds) is
-- the rest.
local function run_text(lease, attempts, runs, started, w)
  return lease .. ' ' .. attempts .. ' ' .. runs .. ' ' .. started .. ' ' .. w
end
-- The parts of a task's run (nil: never placed): lease, attempts and runs as numbers,
-- started_at and worker as text.
local function run_of(s)
  if not s then return 0, 0, 0, '-', '' end
  local l, a, n, started, w = string.match(s, '^(%d+) (%d+) (%d+) (%S+) (.*)$')
  return num(l), num(a), num(n), started, w
end
-- The run of a task that goes back to waiting, from its counts (numbers): it has no start
-- and no worker.
local function waiting_run(lease, attempts, runs)
  return run_text(str(lease), str(attempts), str(runs), '-', '')
end

-- Hand task `id` (of `cost`, text; `attempts` and `runs` so far, numbers) to worker `w`
-- under a new lease (the fencing token every later call about this assignment must
-- present): its record now, its indexes and the worker's inbox through batch b. The caller
-- charges the worker.
local function assign(id, w, lease, cost, attempts, runs, now, b)
  local l = str(lease)
  redis.call('HSET', task_key(id), 'state', 'assigned', 'assigned_at', ts(now), 'run',
    run_text(l, str(attempts), str(runs), '-', w))
  later(b, 'zrem', key('pending'), id)
  later(b, 'zadd', key('assigned'), ts(now), id)
  later(b, 'sadd', held_key(w), held_token(id, l, cost, true))
  later(b, 'rpush', inbox_key(w), id)
end

-- A task's `spec`: what it was submitted with that does not change, but for what placement
-- reads on its own (cost and tags), in one field written once: "<max_attempts> <timeout_ms>
-- <kind>[ <role>]" on the first line, the payload (JSON text) after it. The kind is a name
-- ([A-Za-z0-9_.-]), so the first newline ends the head. One field instead of five is read,
-- and handed to the worker, as one string: each field costs a little in every command that
-- touches it, in the reply that carries it, and in memory for as long as the task is kept.
local function spec_of(max_attempts, timeout_ms, kind, role, payload)
  local head = max_attempts .. ' ' .. timeout_ms .. ' ' .. kind
  if role then return head .. ' ' .. role .. '\n' .. payload end
  return head .. '\n' .. payload
end
-- The timeout of one attempt (ms, a number), from the spec. A queue's tasks share a few
-- heads, so the last head read is kept as an anchored pattern of digits and spaces
-- ("^3 300000 "): a spec that begins with it is answered by one find, which makes no string
-- (start() writes that check out). Another is read with two plain finds (a pattern match
-- with captures costs twice as much), its timeout turned into a number once per distinct
-- text (strtod costs more than the finds; at most 64 texts are kept, for the library's
-- life). A spec not in this shape (a record of a version before it, which this one does not
-- serve) gets TaskSpec's default timeout, as max_attempts_of() gives it one attempt: the
-- call goes on instead of failing halfway.
local TIMEOUTS, timeouts_kept, DEFAULT_TIMEOUT = {}, 0, 300000
-- '^$' matches no spec that has a timeout.
local last_head, last_timeout = '^$', DEFAULT_TIMEOUT
local function timeout_of(spec)
  if not spec then return DEFAULT_TIMEOUT end
  if string.find(spec, last_head) then return last_timeout end
  local a = string.find(spec, ' ', 2, true)
  local z = a and string.find(spec, ' ', a + 2, true)
  if not z then return DEFAULT_TIMEOUT end
  local text = string.sub(spec, a + 1, z - 1)
  local t = TIMEOUTS[text]
  if not t then
    t = tonumber(text)
    if not t then return DEFAULT_TIMEOUT end
    if timeouts_kept < 64 then TIMEOUTS[text], timeouts_kept = t, timeouts_kept + 1 end
  end
  local head = string.sub(spec, 1, z)
  if string.find(head, '^%d+ %d+ $') then last_head, last_timeout = '^' .. head, t end
  return t
end
-- The attempts a task allows, from its spec. A record without one (written by a version
-- before spec, which this one does not serve) allows one: it fails instead of breaking the
-- call, which has already taken its reports' tokens off the worker.
local function max_attempts_of(spec)
  return spec and tonumber(string.match(spec, '^%d+')) or 1
end

-- Appends to `out` the record a worker gets for a task it starts: its running held token
-- (lease, cost and id), spec and attempt (text). The records go flat, three strings each, in
-- one list: a table per task would cost more than the rest of its record.
local function claimed_row(out, token, spec, attempt)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3] = token, spec, attempt
end

-- The lists of batch b that start() fills for worker w, found once per call rather than
-- once per task: `from`, the index its tasks leave (pending when `fresh`, placed and started
-- in one step with no inbox in between; else assigned); `held`, w's held set, gaining the
-- running tokens; and for assigned tasks `unheld`, the same set losing their assigned tokens.
local function start_lists(b, w, fresh)
  local hk = held_key(w)
  if fresh then
    return { fresh = true, from = batch_list(b, 'zrem', key('pending')),
      held = batch_list(b, 'sadd', hk) }
  end
  return { fresh = false, from = batch_list(b, 'zrem', key('assigned')),
    held = batch_list(b, 'sadd', hk), unheld = batch_list(b, 'srem', hk) }
end

-- Start task `id` on worker w: running under `lease` (text) until its deadline (start +
-- its timeout), which bounds w's entry in the leases index. `attempts` and `runs` are its
-- counts so far (run_of()); `spec` and `cost` are its fields. Index changes go to batch b,
-- through `lists` (start_lists(), which tells whether the task is fresh); the record the
-- worker gets is appended to `out` (claimed_row()).
local function start(tk, id, w, attempts, runs, spec, cost, lease, now, b, lists, out)
  -- str(), held_token(), run_text() and ts() written out: this runs for every task started.
  local attempt, run = attempts + 1, runs + 1
  attempt, run = STR[attempt] or fmt(attempt), STR[run] or fmt(run)
  local token = lease .. ' ' .. cost .. ' ' .. id
  local from, held = lists.from, lists.held
  from[#from + 1] = id
  held[#held + 1] = token
  -- A fresh task gets no assigned_at: it was never assigned apart from its start (readers
  -- take started_at).
  redis.call('HSET', tk, 'state', 'running', 'run',
    lease .. ' ' .. attempt .. ' ' .. run .. ' ' ..
    (now == now_of_text and now_text or ts(now)) .. ' ' .. w)
  if not lists.fresh then
    local unheld = lists.unheld
    unheld[#unheld + 1] = 'a' .. token
  end
  -- The lease: when the attempt must be over by (started_at + timeout_ms). The worker's own
  -- timer stops the handler first; recovery expires the lease if a hung worker never
  -- reports, and finds it through the worker's entry in the leases index.
  -- timeout_of()'s first check written out: most specs begin with the last head read.
  local timeout = spec and string.find(spec, last_head) and last_timeout or timeout_of(spec)
  local due, soonest = now + timeout, b.soonest[w]
  if not soonest or due < soonest then b.soonest[w] = due end
  b.running = b.running + 1
  -- claimed_row(), written out.
  local n = #out
  out[n + 1], out[n + 2], out[n + 3] = token, spec, attempt
end

-- Charge `cost` to worker w in Redis at once (its record and free indexes).
local function charge(w, cost, tick)
  redis.call('HINCRBY', worker_key(w), 'assigned', str(cost))
  redis.call('HSET', worker_key(w), 'tick', fmt(tick))
  index_worker(w)
end

-- Workers of the free index a placement call keeps in Lua.
local VIEW = 16

-- The top of the free index, read once and charged in Lua during a placement call, so that
-- placing untagged tasks costs no index read or write per task. It holds the VIEW workers
-- with the most free capacity and `bound`, the score of the next one (-1 when none): a
-- worker of the view whose score is above the bound is the best of all. When the view
-- cannot tell, it is written back (view_sync) and the index decides.
-- `top`: the largest free capacity, when the caller has just read it.
local function view_new(top) return { loaded = false, top = top } end

local function view_load(v)
  local r = redis.call('ZREVRANGE', free_key(), 0, VIEW, 'WITHSCORES')
  v.ws, v.free, v.tie, v.charged, v.tick, v.bound = {}, {}, {}, {}, {}, -1
  for i = 1, #r, 2 do
    local s = tonumber(r[i + 1])
    if #v.ws < VIEW then
      local w = r[i]
      v.ws[#v.ws + 1] = w
      v.free[w] = math.floor(s / SHIFT)
      v.tie[w] = s - v.free[w] * SHIFT
    else
      v.bound = s
    end
  end
  v.loaded = true
end

-- Writes the view's charges to Redis and forgets it (the next use reads the index again).
local function view_sync(v)
  if not v.loaded then return end
  for w, cost in pairs(v.charged) do charge(w, cost, v.tick[w]) end
  v.loaded = false
end

local function view_max_free(v)
  if not v.loaded then
    local top = v.top or max_free()
    v.top = nil
    return top
  end
  local best = v.bound < 0 and 0 or math.floor(v.bound / SHIFT)
  local ws, free = v.ws, v.free
  for i = 1, #ws do
    local f = free[ws[i]]
    if f > best then best = f end
  end
  return best
end

-- Assignment ticks (the tie-break) for one call: the counter is read once and written back
-- by save_ticks() at the end of the call.
local function tick_source()
  return { used = 0 }
end

local function next_tick(t)
  if not t.base then t.base = tonumber(redis.call('GET', key('tick')) or '0') end
  t.used = t.used + 1
  return t.base + t.used
end

local function save_ticks(t)
  if t.used > 0 then redis.call('SET', key('tick'), fmt(t.base + t.used)) end
end

-- Baseline policies, for `ballast bench` only (a queue gets one by setting P .. 'policy'):
-- they place with the same code paths so that the comparison with place() is fair. Only the
-- bench build of the library reads the policy: store/library.rs sets BENCH, true there and
-- false in the build every other caller uses.
--   count: a worker takes tasks while it holds fewer than `capacity` of them (a pull with
--          concurrency = capacity: cost ignored);
--   safe:  the same with concurrency = floor(capacity / P .. 'policy_unit') (the largest
--          cost), which never oversubscribes;
--   round-robin / random: every pending task at once, to the next or a random worker,
--          whatever its load.
local function place_baseline(policy, now, got)
  local workers = redis.call('ZRANGE', cap_key(), 0, -1)
  if #workers == 0 then return 0 end
  table.sort(workers)
  local unit = tonumber(redis.call('GET', key('policy_unit')) or '1')
  local placed, ticks = 0, tick_source()
  while placed < MAX_PLACE do
    local id = redis.call('ZRANGE', key('pending'), 0, 0)[1]
    if not id then break end
    local h = redis.call('HMGET', task_key(id), 'cost', 'run')
    local w
    if policy == 'round-robin' then
      w = workers[(redis.call('INCR', key('policy_rr')) % #workers) + 1]
    elseif policy == 'random' then
      local t = redis.call('TIME')
      local r = redis.call('INCR', key('policy_rr')) * 2654435761 + tonumber(t[2])
      w = workers[(r % #workers) + 1]
    else
      local best, room = nil, 0
      for _, c in ipairs(workers) do
        local slots = tonumber(redis.call('HGET', worker_key(c), 'capacity'))
        if policy == 'safe' then slots = math.floor(slots / unit) end
        local free = slots - redis.call('SCARD', held_key(c))
        if free > room then best, room = c, free end
      end
      w = best
    end
    if not w then break end
    -- Each assignment is written before the next choice, which reads it.
    local b = new_batch()
    local lease, attempts, runs = run_of(h[2])
    assign(id, w, lease + 1, h[1], attempts, runs, now, b)
    flush_batch(b)
    if got then got[id] = w end
    charge(w, num(h[1]), next_tick(ticks))
    placed = placed + 1
  end
  save_ticks(ticks)
  return placed
end

-- Park pending task `id` (through batch b) until a worker joins.
local function park_later(b, id)
  later(b, 'zrem', key('pending'), id)
  later(b, 'zadd', key('parked'), redis.call('ZSCORE', key('pending'), id), id)
end

-- Place pending tasks: highest priority first, FIFO within a priority, each on the eligible
-- worker with the most free capacity that fits it.
--
-- One sweep down the pending order. A task that fits nowhere now reserves the worker it will
-- run on (no smaller task goes there in this call) and the tasks behind it go around it. Its
-- shape (tags and cost) is then known to be blocked for the rest of the call, because free
-- capacity only shrinks within a call: later tasks of the same shape are stepped over at
-- the cost of one HMGET and without using look-ahead. The sweep stops after LOOKAHEAD
-- blocked shapes or MAX_SCAN tasks stepped over, so one call reads at most MAX_PLACE +
-- MAX_SCAN tasks besides those it parks.
-- A task that no accepting worker could ever run is parked until a new worker joins.
-- Placed and parked tasks leave pending when the call's batch is flushed at its end.
-- `me` (optional) is {w = worker, max = n, out = {}, n = 0}: tasks placed on that worker,
-- up to max, are started at once, their records appended to `out` (claimed_row()) and
-- counted in n (a worker that reports finished tasks gets its next ones in the same call,
-- with no inbox round trip).
-- `got` (optional): a table that receives got[id] = worker for every task placed and
-- got[id] = false for every task parked.
-- Returns the number of tasks placed.
local function place(now, me, got)
  if BENCH then
    local policy = redis.call('GET', key('policy'))
    if policy then return place_baseline(policy, now, got) end
  end
  -- No worker has room: the usual state during a burst of submits, so it costs one read.
  local top = max_free()
  if top == 0 then return 0 end
  local b, v, ticks = new_batch(), view_new(top), tick_source()
  -- task_key(), and below num() and str(), written out (and split_tags() called only for a
  -- task with tags): the loop runs for every task.
  local task_prefix = P .. 'task:'
  -- Shapes known blocked (no room now) or incapable (no accepting worker could ever run
  -- them: the capacity indexes do not change during a call, so that answer holds for it).
  local placed, reserved, blocked, incapable, me_lists = 0, {}, {}, {}, nil
  local budget, seen, stepped = LOOKAHEAD, 0, 0
  local done = false
  while not done and budget > 0 and stepped < MAX_SCAN and view_max_free(v) > 0 do
    -- Every task read stays in pending until the end, so the next page starts after all of
    -- them. Without scores: formatting them costs more than the rest of the read.
    local ids = redis.call('ZRANGE', key('pending'), str(seen), str(seen + 31))
    if #ids == 0 then break end
    for i = 1, #ids do
      local id = ids[i]
      local tk = task_prefix .. id
      seen = seen + 1
      -- The spec (which a start needs) only while `me` may still start a task.
      local h
      if me and me.n < me.max then
        h = redis.call('HMGET', tk, 'cost', 'tags', 'run', 'spec')
      else
        h = redis.call('HMGET', tk, 'cost', 'tags', 'run')
      end
      -- An untagged shape is its cost alone (no string made for it); a tagged one has '|'.
      local shape = h[2] and (h[2] .. '|' .. h[1]) or h[1]
      if blocked[shape] then
        stepped = stepped + 1
      elseif incapable[shape] then
        park_later(b, id)
        if got then got[id] = false end
      else
        local cost, tags = INT[h[1]] or tonumber(h[1]), NO_TAGS
        if h[2] then tags = split_tags(h[2]) end
        local w
        if #tags == 0 then
          -- From the view: the usable worker with the most free capacity that fits `cost`,
          -- nil when none fits, false when the view cannot tell. Written out, with a numeric
          -- loop and usable() written out too: this runs for every untagged task placed.
          if not v.loaded then view_load(v) end
          local best, best_score = nil, -1
          local ws, free, tie = v.ws, v.free, v.tie
          for k = 1, #ws do
            local c = ws[k]
            local f, r = free[c], reserved[c]
            if f >= cost and (r == nil or r == id) then
              local score = f * SHIFT + tie[c]
              if score > best_score then best, best_score = c, score end
            end
          end
          if best_score > v.bound then
            w = best
          elseif v.bound >= 0 then
            w = false
          end
        end
        if #tags > 0 or w == false then
          view_sync(v)
          w = best_fit(cost, tags, reserved, id)
        end
        if w then
          -- next_tick() written out. A worker of the view is charged in Lua (view_sync()
          -- writes it to Redis); the tie-break moves it behind equal workers.
          if not ticks.base then next_tick(ticks) else ticks.used = ticks.used + 1 end
          local tick = ticks.base + ticks.used
          if v.loaded then
            v.free[w], v.tie[w], v.tick[w] = v.free[w] - cost, SHIFT - 1 - (tick % SHIFT), tick
            v.charged[w] = (v.charged[w] or 0) + cost
          else
            charge(w, cost, tick)
          end
          -- A task never placed (the usual one) has no run to read.
          local lease, attempts, runs = 1, 0, 0
          if h[3] then
            lease, attempts, runs = run_of(h[3])
            lease = lease + 1
          end
          if me and w == me.w and me.n < me.max then
            if not me_lists then me_lists = start_lists(b, w, true) end
            start(tk, id, w, attempts, runs, h[4], h[1], STR[lease] or fmt(lease), now, b,
              me_lists, me.out)
            me.n = me.n + 1
          else
            assign(id, w, lease, h[1], attempts, runs, now, b)
          end
          if got then got[id] = w end
          placed = placed + 1
          -- The worker just charged tells, while it has room left, that there is some.
          if placed >= MAX_PLACE
            or not (v.loaded and v.free[w] > 0) and view_max_free(v) == 0 then
            done = true
            break
          end
        else
          view_sync(v)
          local r = reserve_for(cost, tags, reserved)
          if r or capable(cost, tags) then
            if r then reserved[r] = id end
            blocked[shape] = true
            budget = budget - 1
            stepped = stepped + 1
            if budget == 0 then
              done = true
              break
            end
          else
            incapable[shape] = true
            park_later(b, id)
            if got then got[id] = false end
          end
        end
      end
    end
  end
  view_sync(v)
  -- When no task was stepped over, every task read left pending (placed or parked): they
  -- are its first `seen` by rank, and nothing else changed pending during the call, so one
  -- ZREMRANGEBYRANK takes them off for less than a ZREM of each (no search for each id).
  local pk = key('pending')
  local leaving = b.zrem and b.zrem[pk]
  if stepped == 0 and leaving and #leaving == seen then
    b.zrem[pk] = {}
    redis.call('ZREMRANGEBYRANK', pk, 0, str(seen - 1))
  end
  flush_batch(b)
  save_ticks(ticks)
  return placed
end

-- New supply (a worker joined): parked tasks get another chance; place() parks again those
-- that still fit no one.
local function unpark_all()
  if redis.call('EXISTS', key('parked')) == 1 then
    redis.call('ZUNIONSTORE', key('pending'), 2, key('pending'), key('parked'), 'AGGREGATE', 'MIN')
    redis.call('DEL', key('parked'))
  end
end

-- Most attempt entries kept in a task's history.
local HISTORY_MAX = 50

-- Append one attempt's entry to the task's history (a JSON array in the record). The history
-- holds the attempts that did not succeed: a success is told by the record itself (its
-- state, attempts, worker and times), so the common case writes no history at all.
-- `raw`: the history as the caller read it (false when there is none), or nil to read it.
local function append_history(tk, entry, raw)
  if raw == nil then raw = redis.call('HGET', tk, 'history') end
  local list = {}
  if raw then list = cjson.decode(raw) end
  list[#list + 1] = entry
  while #list > HISTORY_MAX do table.remove(list, 1) end
  redis.call('HSET', tk, 'history', cjson.encode(list))
end

-- Take held task `id` (in `state`, assigned or running, under `lease`, of `cost`: text, as
-- its record has them) off worker w: out of the assigned index or the running count, out of
-- w's held set, and its cost off w's count (w's entry in the leases index may stay: it is a
-- bound, and recovery drops it when it comes due). An assigned task's id stays in w's inbox:
-- taking it out would be a scan of the list (LREM), and claim() skips an id whose task is no
-- longer assigned to w when it comes to it.
-- Returns whether w's record exists; the caller re-indexes w.
local function unhold(id, w, state, cost, lease)
  redis.call('SREM', held_key(w), held_token(id, lease, cost, state == 'assigned'))
  if state == 'running' then
    running_add(-1)
    -- A cancel request is void once its task no longer runs here.
    redis.call('SREM', cancel_key(w), id)
  else
    redis.call('ZREM', key(state), id)
  end
  -- An orphan's worker has no record; counting on it would create one.
  if redis.call('EXISTS', worker_key(w)) == 0 then return false end
  redis.call('HINCRBY', worker_key(w), 'assigned', -tonumber(cost))
  return true
end

-- Defined below: what a job does when one of its tasks ends.
local job_task_settled
-- Passed for `job` by a caller whose tasks' job has ended: settling them tells it nothing.
local NO_JOB = {}

-- Default retention of succeeded and cancelled tasks (store/mod.rs's RETAIN_COUNT and
-- RETAIN_AGE say the same); P .. 'retention' (fields `count` and `ms`) overrides it per
-- queue. Dead letters (failed) are kept until retried or purged.
local RETAIN_COUNT = 100000
local RETAIN_MS = 7 * 24 * 3600 * 1000

-- After `n` tasks reached `state` (succeeded or cancelled), drop at most 2n of the oldest
-- finished tasks past the queue's retention: a little work at every finish keeps the list
-- at its bound (it shrinks back after a burst) with no sweeper and no long call. The list is
-- in finish order, so its head is the oldest: the count is a length, and the age is read
-- from the head's record, one victim at a time (only an idle-then-old queue trims by age;
-- a busy one reaches its count first).
local function trim_finished(state, now, n)
  local r = redis.call('HMGET', key('retention'), 'count', 'ms')
  local max_count, max_ms = tonumber(r[1]) or RETAIN_COUNT, tonumber(r[2]) or RETAIN_MS
  local most = 2 * n
  local drop = math.max(math.min(redis.call('LLEN', key(state)) - max_count, most), 0)
  -- Then by age, one at a time from the oldest left: the first young enough ends it, and in
  -- a busy queue that is the first one read.
  while drop < most do
    local id = redis.call('LINDEX', key(state), drop)
    if not id then break end
    local at = tonumber(redis.call('HGET', task_key(id), 'finished_at'))
    if at and at >= now - max_ms then break end
    drop = drop + 1
  end
  if drop == 0 then return end
  local victims = redis.call('LPOP', key(state), drop)
  local keys = {}
  for i, old in ipairs(victims) do keys[i] = task_key(old) end
  redis.call('DEL', unpack(keys))
end

-- Writes batch b, then trims the finished lists that its settled tasks grew.
local function flush_settled(b, now)
  flush_batch(b)
  for settled, count in pairs(b.settled) do trim_finished(settled, now, count) end
  b.settled = {}
end

-- Move a task, already out of its previous index, to a final state (succeeded, failed or
-- cancelled; failed tasks are the dead letters) and tell waiters (one event per batch: the
-- ids, space-separated). `b`: a batch that takes its index entry and event (the caller
-- flushes it and trims with flush_settled()), or nil for a batch of its own, written at
-- once. `job`: NO_JOB when the task's job is known to have ended (nothing to tell it).
-- finish_tasks.lua writes out the path of a success reported by its worker: what changes
-- here changes there.
local function settle(id, state, field, body, now, b, job)
  -- task_key() and ts(), written out: this runs for every task that ends.
  redis.call('HSET', P .. 'task:' .. id, 'state', state, 'finished_at',
    now == now_of_text and now_text or ts(now), field, body)
  local own = b or new_batch()
  -- Dead letters leave one by one (retried or purged): a sorted set by time. Succeeded and
  -- cancelled tasks leave oldest first only: a list in finish order, cheaper to append to.
  if state == 'failed' then
    later(own, 'zadd', key(state), ts(now), id)
  else
    -- The list's batch list, found once per batch: this runs for every task that succeeds.
    local t = own.finished[state]
    if not t then
      t = batch_list(own, 'rpush', key(state))
      own.finished[state] = t
    end
    t[#t + 1] = id
    own.settled[state] = (own.settled[state] or 0) + 1
  end
  own.events[#own.events + 1] = id
  if not b then flush_settled(own, now) end
  -- A job's tasks are named after it (<job>-m<i>, <job>-reduce): an id without a '-' is no
  -- job's, and needs neither a read of its job fields nor a call.
  if job ~= NO_JOB and string.find(id, '-', 1, true) then
    job_task_settled(id, state, body, now)
  end
end

-- Index scheduled task `id` to run at `at` (ms, text) and wake a promotion loop.
local function wake_at(id, at)
  redis.call('ZADD', key('scheduled'), at, id)
  redis.call('LPUSH', key('wake'), '1')
  redis.call('LTRIM', key('wake'), 0, 0)
end

-- Make task `id` scheduled for a retry at `due` (ms) after error `err`, and wake a promotion
-- loop: they wait on P .. 'wake' (a blocking pop) rather than poll, so a task scheduled
-- while they sleep is not missed. The list holds one element at most.
local function schedule_retry(id, due, err)
  local at = fmt(due)
  redis.call('HSET', task_key(id), 'state', 'scheduled', 'run_at', at, 'error', err)
  wake_at(id, at)
end

-- Store a new task record and queue it (pending, or scheduled when `due` is ahead). `extra`
-- holds further fields (a job's map tasks carry `job` and `chunk`). A caller storing many
-- passes `b`, a batch that takes the pending entry, and `seq`, the task's sequence number
-- (taken from the counter for the whole batch at once). Returns its order.
-- The record holds nothing it can be told without: its id and queue are in its key,
-- `priority` and `tags` are absent while zero or empty, and `run` until it is placed. Every
-- field costs a little in each command that touches the record, and memory for as long as
-- it is kept.
local function new_task(id, spec, priority, cost, tags, due, now, extra, b, seq)
  local tk = task_key(id)
  seq = seq or redis.call('INCR', key('seq'))
  local order = fmt((1000 - num(priority)) * ORDER_SHIFT + seq)
  local state, at = 'pending', nil
  if due > now then state, at = 'scheduled', fmt(due) end
  redis.call('HSET', tk, 'spec', spec, 'cost', cost, 'state', state, 'order', order,
    'submitted_at', ts(now))
  -- The fields most tasks go without, in one more command at most (a table for them would
  -- cost every task).
  if priority ~= '0' or tags ~= '' or at or (extra and #extra > 0) then
    -- `extra` is made afresh by every caller, so it takes the other fields too.
    local f = extra or {}
    if priority ~= '0' then f[#f + 1], f[#f + 2] = 'priority', priority end
    if tags ~= '' then f[#f + 1], f[#f + 2] = 'tags', tags end
    if at then f[#f + 1], f[#f + 2] = 'run_at', at end
    redis.call('HSET', tk, unpack(f))
  end
  if at then
    wake_at(id, at)
  elseif b then
    later(b, 'zadd', key('pending'), order, id)
  else
    redis.call('ZADD', key('pending'), order, id)
  end
  return order
end

-- Cancel a task that has not ended: at once when it has not started (the caller calls
-- place() if it freed an assigned task's cost), by a request to its worker when it runs.
-- `b` and `job` as settle() takes them. Returns "cancelled", "requested", or "final" when
-- it had already ended (or has no record), then the state and worker it found.
local function cancel(id, now, b, job)
  local tk = task_key(id)
  local h = redis.call('HMGET', tk, 'state', 'run', 'cost')
  local state = h[1]
  local lease, _, _, _, w = run_of(h[2])
  if state == 'running' then
    redis.call('HSET', tk, 'cancel_requested', 1)
    redis.call('SADD', cancel_key(w), id)
    return 'requested', state, w
  end
  if state == 'pending' then
    redis.call('ZREM', key('pending'), id)
    redis.call('ZREM', key('parked'), id)
  elseif state == 'scheduled' then
    redis.call('ZREM', key(state), id)
  elseif state == 'assigned' then
    if unhold(id, w, state, h[3], str(lease)) then index_worker(w) end
  else
    return 'final', state, w
  end
  settle(id, 'cancelled', 'error', 'cancelled before it started', now, b, job)
  return 'cancelled', state, w
end

local function job_key(jid) return P .. 'job:' .. jid end

-- End a job: record its outcome, stop its unfinished tasks, tell waiters. Its map results
-- are dropped: no reduce will read them any more, and they can be large.
local function end_job(jid, state, field, body, now)
  local jk = job_key(jid)
  redis.call('HSET', jk, 'state', state, field, body, 'finished_at', ts(now))
  redis.call('DEL', jk .. ':results')
  redis.call('ZADD', key('jobs:done'), ts(now), jid)
  -- One batch for all its tasks: one index write, one event and one trim, however many.
  -- They belong to a job that has ended, which their ends no longer change.
  local b = new_batch()
  for _, tid in ipairs(redis.call('LRANGE', jk .. ':tasks', 0, -1)) do
    cancel(tid, now, b, NO_JOB)
  end
  flush_settled(b, now)
  redis.call('PUBLISH', key('events'), 'job:' .. jid)
end

-- A job's task ended. A map result is kept under the job; a failed chunk counts against the
-- job's tolerance (over it, the job fails and its other tasks are cancelled); the call that
-- records the last map outcome creates the reduce task in the same step. A task finishes
-- once (its lease fences it), so each chunk is counted once and the reduce is made once.
job_task_settled = function(id, state, body, now)
  local j = redis.call('HMGET', task_key(id), 'job', 'chunk')
  local jid, chunk = j[1], j[2]
  if not jid then return end
  local jk = job_key(jid)
  local js = redis.call('HMGET', jk, 'state', 'reduce_task', 'done', 'failed', 'total',
    'tolerate')
  if js[2] == id then
    if state == 'succeeded' then
      end_job(jid, 'succeeded', 'result', body, now)
    elseif js[1] == 'reducing' then
      end_job(jid, state, 'error', 'reduce ' .. state .. ': ' .. body, now)
    end
    return
  end
  if js[1] ~= 'running' then return end
  local done, failed, total = tonumber(js[3]), tonumber(js[4]), tonumber(js[5])
  if state == 'succeeded' then
    redis.call('HSET', jk .. ':results', chunk, body)
    done = redis.call('HINCRBY', jk, 'done', 1)
  else
    failed = redis.call('HINCRBY', jk, 'failed', 1)
    redis.call('HSETNX', jk, 'first_failed_chunk', chunk)
    if failed > tonumber(js[6]) then
      end_job(jid, 'failed', 'error', 'chunk ' .. chunk .. ' ' .. state .. ': ' .. body, now)
      return
    end
  end
  if done + failed < total then return end
  local r = redis.call('HMGET', jk, 'reduce_kind', 'priority', 'reduce_cost', 'tags',
    'max_attempts', 'timeout_ms')
  local rid = jid .. '-reduce'
  new_task(rid, spec_of(r[5], r[6], r[1], 'reduce', cjson.encode({ job = jid, chunks = total })),
    r[2], r[3], r[4], now, now, { 'job', jid })
  redis.call('HSET', jk, 'state', 'reducing', 'reduce_task', rid)
  redis.call('RPUSH', jk .. ':tasks', rid)
end

-- Put a held task back in pending at its original order and take its cost off worker w
-- (when w still exists). A run cut short by a crash, a drain or a takeover is not the task's
-- fault, so it gives its attempt back; `runs` still counts it. But a task whose runs were cut
-- short more than max_attempts times is likely what kills its workers: from then on the run
-- counts, and once its attempts are spent it goes to the dead letters instead of looping.
-- Returns whether the task was still held (and so taken off w). The caller calls place().
local function requeue(id, w, now)
  local tk = task_key(id)
  local h = redis.call('HMGET', tk, 'cost', 'order', 'state', 'run', 'cancel_requested')
  -- Only a task still held: one that ended meanwhile (a job that failed cancels its other
  -- tasks, including those this loop has yet to reach) stays as it is.
  if h[3] ~= 'assigned' and h[3] ~= 'running' then return false end
  local lease, attempts, runs = run_of(h[4])
  unhold(id, w, h[3], h[1], str(lease))
  if h[5] == '1' then
    settle(id, 'cancelled', 'error', 'cancelled while its worker was lost', now)
    return true
  end
  redis.call('HINCRBY', tk, 'requeues', 1)
  if h[3] == 'running' then
    -- The spec (payload and all) is read only here, where its max attempts are needed.
    local cut = redis.call('HINCRBY', tk, 'cut_short', 1)
    local max_attempts = max_attempts_of(redis.call('HGET', tk, 'spec'))
    append_history(tk, { attempt = attempts, worker = w, finished_at = now,
      outcome = 'lost', error = 'the run was cut short (worker lost, drained or replaced)' })
    if cut <= max_attempts then
      attempts = attempts - 1
    elseif attempts >= max_attempts then
      settle(id, 'failed', 'error', 'gave up: ' .. cut .. ' runs were cut short', now)
      return true
    end
  end
  redis.call('ZADD', key('pending'), h[2], id)
  redis.call('HSET', tk, 'state', 'pending', 'run', waiting_run(lease, attempts, runs))
  redis.call('HDEL', tk, 'assigned_at')
  return true
end

-- Remove worker w entirely: out of every index, its tasks handed back, its keys deleted.
-- Returns the number of tasks handed back. The caller calls place().
local function release_worker(w, now)
  if redis.call('EXISTS', worker_key(w)) == 1 then
    redis.call('HSET', worker_key(w), 'state', 'gone')
    index_worker(w)
  end
  local back = 0
  for _, id in ipairs(held_ids(w)) do
    if requeue(id, w, now) then back = back + 1 end
  end
  redis.call('DEL', worker_key(w), inbox_key(w), held_key(w), cancel_key(w))
  redis.call('ZREM', leases_key(), w)
  redis.call('SREM', key('workers'), w)
  redis.call('ZREM', key('heartbeats'), w)
  return back
end

-- Claim up to `max` tasks for worker w: `given` ids (already popped from the inbox by the
-- worker's blocking wait) and then more from the inbox. Each must still be assigned to w;
-- an id whose task was taken back meanwhile is dropped, and another is popped in its place.
-- Appends the records for the worker to `out` (a new list when nil; see claimed_row()) and
-- returns it.
local function claim(w, given, max, now, out)
  -- The batch is made for the first task started: a finish call that finds the inbox empty
  -- (most of them) makes none.
  local b, lists, n = nil, nil, 0
  out = out or {}
  local ids = given
  while true do
    for _, id in ipairs(ids) do
      local tk = task_key(id)
      local h = redis.call('HMGET', tk, 'state', 'run', 'cost', 'spec')
      if h[1] == 'assigned' then
        local lease, attempts, runs, _, held_by = run_of(h[2])
        if held_by == w then
          if not b then
            b = new_batch()
            lists = start_lists(b, w, false)
          end
          start(tk, id, w, attempts, runs, h[4], h[3], str(lease), now, b, lists, out)
          n = n + 1
        end
      end
    end
    if n >= max then break end
    ids = redis.call('LPOP', inbox_key(w), max - n)
    if not ids then break end
  end
  if b then flush_batch(b) end
  return out
end

-- An attempt of task `id` on worker w ended without success, and the task is already out of
-- its state index: `outcome` is "retry", "failed" or "cancelled", `err` its message. A task
-- asked to stop (`cancel_requested`) does not run again: a retry (the handler failed, or was
-- stopped without the worker knowing why) ends it cancelled. A retry with no attempts left
-- is the task's last failure; one with attempts left waits in scheduled until `retry_at`.
-- The attempt goes to the history. What this needs is read here: only these outcomes need
-- it. `b` as settle() takes it.
local function end_attempt(id, w, outcome, err, retry_at, now, b)
  local tk = task_key(id)
  local r = redis.call('HMGET', tk, 'run', 'spec', 'history', 'cancel_requested')
  if r[4] and outcome == 'retry' then outcome = 'cancelled' end
  local _, attempts, _, started = run_of(r[1])
  if outcome == 'retry' and attempts >= max_attempts_of(r[2]) then outcome = 'failed' end
  append_history(tk, { attempt = attempts, worker = w, started_at = tonumber(started),
    finished_at = now, outcome = outcome, error = err }, r[3])
  if outcome == 'retry' then
    schedule_retry(id, retry_at, err)
  else
    settle(id, outcome, 'error', err, now, b)
  end
end

-- Record how one attempt of task `id` (of `cost`, text) on worker w ended (see
-- finish_tasks.lua for the outcomes; `delay`: the retry delay in ms, as text) and settle or
-- reschedule it; its index changes and the cost it frees go to batch b. The caller has
-- taken its token off w's held set (take_held()), so the task ran there under the reported
-- lease. The caller ends with finish_done(), then places and claims, once for however many
-- tasks it finishes.
local function finish_one(w, id, cost, outcome, body, delay, now, b)
  b.done[#b.done + 1] = id
  b.freed = b.freed + num(cost)
  if outcome == 'succeeded' then
    settle(id, 'succeeded', 'result', body, now, b)
  else
    end_attempt(id, w, outcome, body, now + num(delay), now, b)
  end
end

-- Which of `tokens` (running tasks' held_token()s) worker w holds, taking them off its held
-- set: true when it held them all, else a list of 1 or 0 in their order. One SREM per
-- BATCH_ARGS answers for the usual call: when it takes off as many tokens as it was given,
-- each was held, and none was given twice. When it takes off fewer (a report that is stale
-- or repeated: the worker's task was taken back, or a reply was lost and the report sent
-- again), each token is checked against its task's record, which tells what the set did
-- before the SREM: a task runs on w under a lease exactly while w holds its running token.
-- Every call that adds or removes the one writes the other (start() swaps an assigned
-- token for a running one as it marks the task running; take_held() goes with settle() or
-- end_attempt(), unhold() with requeue() or recovery's end_attempt(); cancel() unholds only
-- assigned tasks; release_worker() requeues every held task before it deletes the set), and
-- this call has written no record yet. The token's text must be the record's own (lease and
-- cost as they are written, no leading zeros), as it must be to match a member of the set.
-- A token given twice counts once.
local function take_held(w, tokens)
  local hk, out, removed = held_key(w), {}, 0
  for i = 1, #tokens, BATCH_ARGS do
    removed = removed
      + redis.call('SREM', hk, unpack(tokens, i, math.min(i + BATCH_ARGS - 1, #tokens)))
  end
  if removed == #tokens then return true end
  local seen = {}
  for i, t in ipairs(tokens) do
    out[i] = 0
    local lease, cost, id = string.match(t, '^(%d+) (%d+) (.*)$')
    if id and not seen[t] then
      local h = redis.call('HMGET', task_key(id), 'state', 'run', 'cost')
      local l, _, _, _, held_by = run_of(h[2])
      if h[1] == 'running' and held_by == w and str(l) == lease and h[3] == cost then
        out[i] = 1
        seen[t] = true
      end
    end
  end
  return out
end

-- After finish_one() calls for worker w that recorded the tasks in b.done and their freed
-- cost in b.freed. Writes the worker's load and count and batch b, then trims what they
-- settled.
local function finish_done(w, b, now)
  local n = #b.done
  -- Every task done was running here.
  b.running = b.running - n
  if n > 0 then
    redis.call('HINCRBY', worker_key(w), 'assigned', fmt(-b.freed))
    redis.call('HINCRBY', worker_key(w), 'finished', str(n))
    index_worker(w)
    -- Cancel requests for tasks that ended anyway are void. There are seldom any: one
    -- look saves passing every finished id to SREM.
    local cancels = cancel_key(w)
    if redis.call('EXISTS', cancels) == 1 then redis.call('SREM', cancels, unpack(b.done)) end
  end
  b.done, b.freed = {}, 0
  flush_settled(b, now)
end

-- Where a task already stored stands, told to a submit that repeats its id (a batch sent
-- again after its reply was lost): "assigned" and the worker while it is assigned or
-- running, "scheduled", "parked" or "pending" while it waits, "finished" once it ended.
local function existing_placement(id)
  local h = redis.call('HMGET', task_key(id), 'state', 'run')
  local state = h[1]
  if state == 'assigned' or state == 'running' then
    local _, _, _, _, w = run_of(h[2])
    return 'assigned', w
  end
  if state == 'scheduled' then return 'scheduled', '' end
  if state ~= 'pending' then return 'finished', '' end
  if redis.call('ZSCORE', key('parked'), id) then return 'parked', '' end
  return 'pending', ''
end

-- Store one submitted task (ARGV-style strings). Returns "exists" when the id is taken
-- (nothing written; existing_placement() tells where it went), "scheduled" when its time is
-- ahead, or nil and the task's order: pending, to be placed and then told with
-- submitted_placements().
local function submit_one(id, spec, priority, cost, tags, delay, not_before, now, b, seq)
  if redis.call('EXISTS', task_key(id)) == 1 then return 'exists' end
  local due = math.max(now + num(delay), num(not_before))
  local order = new_task(id, spec, priority, cost, tags, due, now, nil, b, seq)
  if due > now then return 'scheduled' end
  return nil, order
end

-- Where tasks submitted as pending went once placement ran, without reading them back:
-- ids[k] was submitted with costs[k], tags[k] and orders[k], and `got` is what place()
-- filled in. Returns, by k, "assigned" (to got[ids[k]]), "parked" or "pending". place()
-- does not run while every worker is full, so a task no live worker could ever run is
-- parked here all the same and `parked` means the same whatever the load; with no worker at
-- all it stays pending (nothing can yet be incapable of running it).
local function submitted_placements(ids, costs, tags, orders, got)
  local out, any_worker, can = {}, nil, {}
  for k, id in ipairs(ids) do
    local g = got[id]
    if g then
      out[k] = 'assigned'
    elseif g == false then
      out[k] = 'parked'
    else
      if any_worker == nil then any_worker = redis.call('EXISTS', cap_key()) == 1 end
      local shape = tags[k] .. '|' .. costs[k]
      if any_worker and can[shape] == nil then
        can[shape] = capable(num(costs[k]), split_tags(tags[k]))
      end
      if any_worker and not can[shape] then
        redis.call('ZREM', key('pending'), id)
        redis.call('ZADD', key('parked'), orders[k], id)
        out[k] = 'parked'
      else
        out[k] = 'pending'
      end
    end
  end
  return out
end

-- ---- function body ----
