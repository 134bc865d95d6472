-- Registers or renews a node.
-- KEYS[1] {<prefix>}:node:<id>, KEYS[2] {<prefix>}:nodes (every node that may hold presence)
-- ARGV[1] node ID, ARGV[2] record JSON, ARGV[3] TTL (ms)
-- Returns 1 when the node was not registered before (first start, expiry,
-- or a Redis that lost its data), else 0.
local old = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'GET')
redis.call('SADD', KEYS[2], ARGV[1])
if old then
  return 0
end
return 1
