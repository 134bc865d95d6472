-- Registers or renews a node.
-- KEYS[1] {<prefix>}:node:<id>, KEYS[2] {<prefix>}:nodes (every node that may hold presence),
-- KEYS[3] {<prefix>}:purged:<id> (left by a count-out of this node)
-- ARGV[1] node ID, ARGV[2] record JSON, ARGV[3] TTL (ms), ARGV[4] the run ID in the record
-- Returns 0 when renewed by the same run; 1 when the node must rewrite all its
-- counts (it was not registered: first start, expiry, a Redis that lost its
-- data; or it was counted out since its last heartbeat); 2 when another run
-- of the same node ID held the registration (a restart faster than the TTL):
-- the old run's counts must be counted out too.
local old = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], 'GET')
redis.call('SADD', KEYS[2], ARGV[1])
local purged = redis.call('DEL', KEYS[3])
if old then
  local ok, record = pcall(cjson.decode, old)
  local previous = ''
  if ok and type(record) == 'table' and type(record['runId']) == 'string' then
    previous = record['runId']
  end
  if previous ~= ARGV[4] then
    return 2
  end
  if purged == 0 then
    return 0
  end
end
return 1
