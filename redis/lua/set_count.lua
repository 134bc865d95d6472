-- Sets one node's connection count and share for one user; returns the user's new state.
-- (Prefixed with presence.lua.)
-- KEYS[1]  the user's hash             {<prefix>:v<vnode>}:user:<userId>
-- KEYS[2]  the node's users in vnode   {<prefix>:v<vnode>}:nodeusers:<nodeId>   (same hash tag)
-- ARGV[1] node ID, ARGV[2] the node's count, ARGV[3] now (ms), ARGV[4] user ID,
-- ARGV[5] retention of an offline user's record (ms), ARGV[6] why the count
-- changed ('' when not said), kept as the offline reason when the total is 0.
-- ARGV[7] the user's channel (same hash tag), ARGV[8] 'PUBLISH' or 'SPUBLISH'
-- (Redis Cluster): the new presence is announced there as JSON in this same
-- atomic step, so subscribers see the store's order and seq (the fast path).
-- ARGV[9] the node's share ('active|idleSince|label:n,...').
-- Returns nil when the node's count and share already were these (nothing
-- changed, no sequence number spent); else {previous total, presence JSON}.
local count_field, share_field = 'n:' .. ARGV[1], 'd:' .. ARGV[1]
local new = tonumber(ARGV[2])
local u = read_user(KEYS[1])
local old = u.counts[ARGV[1]] or 0
-- Unchanged, unless this is a 0 for a record that no longer exists: the
-- record was lost (Redis restarted empty), and readers may still hold the
-- user as online, so the zero is announced with a fresh sequence number.
if old == new then
  if new == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
    return false
  end
  if new ~= 0 and u.shares[ARGV[1]] == ARGV[9] then
    return false
  end
end
local previous = u.total
if new == 0 then
  redis.call('HDEL', KEYS[1], count_field, share_field)
  redis.call('SREM', KEYS[2], ARGV[4])
  u.counts[ARGV[1]] = nil
  u.shares[ARGV[1]] = nil
else
  redis.call('HSET', KEYS[1], count_field, new, share_field, ARGV[9])
  redis.call('SADD', KEYS[2], ARGV[4])
  u.counts[ARGV[1]] = new
  u.shares[ARGV[1]] = ARGV[9]
end
u.total = previous - old + new
if new < old then
  redis.call('HSET', KEYS[1], 'ls', ARGV[3])
  u.ls = ARGV[3]
end
u.seq = next_seq(u)
redis.call('HSET', KEYS[1], 'seq', u.seq)
if new ~= old then
  if u.total == 0 then
    if ARGV[6] == '' then
      redis.call('HDEL', KEYS[1], 'or')
      u['or'] = nil
    else
      redis.call('HSET', KEYS[1], 'or', ARGV[6])
      u['or'] = ARGV[6]
    end
  else
    redis.call('HDEL', KEYS[1], 'or')
    u['or'] = nil
  end
end
if u.total == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('PERSIST', KEYS[1])
end
local json = presence_json(u, ARGV[4])
redis.call(ARGV[8], ARGV[7], json)
return {string.format('%d', previous), json}
