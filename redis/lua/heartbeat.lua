-- Registers or renews a node.
-- KEYS[1] {<prefix>}:node:<id>, KEYS[2] {<prefix>}:nodes (every node that may hold presence),
-- KEYS[3] {<prefix>}:purged:<id> (left by a count-out of this node)
-- ARGV[1] node ID, ARGV[2] record JSON, ARGV[3] TTL (ms)
-- Returns 1 when the node must rewrite all its counts: it was not registered
-- (first start, expiry, a Redis that lost its data) or it was counted out
-- since its last heartbeat. Else 0.
local old = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'GET')
redis.call('SADD', KEYS[2], ARGV[1])
local purged = redis.call('DEL', KEYS[3])
if old and purged == 0 then
  return 0
end
return 1
