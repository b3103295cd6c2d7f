-- purge_dead.lua: delete dead letters (failed tasks) for good.
--
-- KEYS[1] zset    P .. 'failed'
-- ARGV[1] string  queue prefix P = "ballast:{queue}:"
-- ARGV[2..] string task ids
--
-- Returns the number of tasks deleted (ids not among the dead letters are skipped).

local n = 0
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('DEL', task_key(ARGV[i]))
    n = n + 1
  end
end
return n
