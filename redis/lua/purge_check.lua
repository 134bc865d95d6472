-- May the lease holder go on counting a node out? Asked before a count-out
-- starts and between its batches (users live in other slots, so the check
-- cannot be part of each write).
-- KEYS[1] {<prefix>}:leader, KEYS[2] {<prefix>}:node:<id>
-- ARGV[1] the lease holder
-- Returns 1 when it may, 0 when the node is registered (alive: leave it),
-- -1 when ARGV[1] does not hold the lease.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
return 1
