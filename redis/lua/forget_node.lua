-- Drops a node from the set of nodes that may hold presence, unless it
-- registered again meanwhile.
-- KEYS[1] {<prefix>}:node:<id>, KEYS[2] {<prefix>}:nodes; ARGV[1] node ID
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 1
end
return 0
