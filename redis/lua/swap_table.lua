-- Compare-and-set of the routing table on its epoch, then a notice to readers.
-- KEYS[1] {<prefix>}:epoch, KEYS[2] {<prefix>}:table, KEYS[3] {<prefix>}:generation,
-- KEYS[4] {<prefix>}:leader
-- ARGV[1] expected epoch ('' when no table is expected), ARGV[2] new epoch,
-- ARGV[3] table JSON, ARGV[4] notice channel, ARGV[5] the table's generation,
-- ARGV[6] the writing lease holder ('' for an unfenced write).
-- Returns 1 when written, 0 when the stored epoch was not the expected one,
-- -1 when ARGV[6] does not hold the leader lease (nothing written).
if ARGV[6] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[6] then
  return -1
end
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[5])
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
