-- After a node's counts were removed: leaves a marker that makes the node, if
-- it is in fact alive, rewrite all its counts at its next heartbeat; and drops
-- it from the set of nodes that may hold presence unless it registered again.
-- The marker is set after the removal, so a heartbeat cannot slip in between.
-- KEYS[1] {<prefix>}:node:<id>, KEYS[2] {<prefix>}:nodes, KEYS[3] {<prefix>}:purged:<id>,
-- KEYS[4] {<prefix>}:leader
-- ARGV[1] node ID, ARGV[2] marker TTL (ms), ARGV[3] the lease holder
-- Returns 1 when the node was dropped, 0 when it registered again meanwhile,
-- -1 when ARGV[3] does not hold the lease (nothing done).
if redis.call('GET', KEYS[4]) ~= ARGV[3] then
  return -1
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
