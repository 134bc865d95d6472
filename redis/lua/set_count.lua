-- Sets one node's connection count for one user; returns the user's new state.
-- KEYS[1]  the user's hash             {<prefix>:v<vnode>}:user:<userId>
-- KEYS[2]  the node's users in vnode   {<prefix>:v<vnode>}:nodeusers:<nodeId>   (same hash tag)
-- ARGV[1] node ID, ARGV[2] the node's count, ARGV[3] now (ms), ARGV[4] user ID,
-- ARGV[5] retention of an offline user's record (ms), ARGV[6] why the count
-- changed ('' when not said), kept as the offline reason when the total is 0.
-- ARGV[7] the user's channel (same hash tag), ARGV[8] 'PUBLISH' or 'SPUBLISH'
-- (Redis Cluster): the new presence is announced there as JSON in this same
-- atomic step, so subscribers see the store's order and seq (the fast path).
-- Returns nil when the node's count already was ARGV[2] (nothing changed, no
-- sequence number spent); else {total, previous total, seq, lastSeen or "",
-- offline reason or ""}.
local field = 'n:' .. ARGV[1]
local new = tonumber(ARGV[2])
local old = tonumber(redis.call('HGET', KEYS[1], field) or '0')
-- Unchanged, unless this is a 0 for a record that no longer exists: the
-- record was lost (Redis restarted empty), and readers may still hold the
-- user as online, so the zero is announced with a fresh sequence number.
if old == new and (new ~= 0 or redis.call('EXISTS', KEYS[1]) == 1) then
  return false
end
local previous = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 2) == 'n:' then
    previous = previous + tonumber(fields[i + 1])
  end
end
if new == 0 then
  redis.call('HDEL', KEYS[1], field)
  redis.call('SREM', KEYS[2], ARGV[4])
else
  redis.call('HSET', KEYS[1], field, new)
  redis.call('SADD', KEYS[2], ARGV[4])
end
if new < old then
  redis.call('HSET', KEYS[1], 'ls', ARGV[3])
end
-- seq = max(previous + 1, server clock in microseconds): it keeps growing
-- even when this record was lost (restart without persistence, expiry).
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0') + 1
if now_us > seq then
  seq = now_us
end
local seq_s = string.format('%.0f', seq)
redis.call('HSET', KEYS[1], 'seq', seq_s)
local total = previous - old + new
local why = ''
if total == 0 then
  why = ARGV[6]
  if why == '' then
    redis.call('HDEL', KEYS[1], 'or')
  else
    redis.call('HSET', KEYS[1], 'or', why)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('HDEL', KEYS[1], 'or')
  redis.call('PERSIST', KEYS[1])
end
local ls = redis.call('HGET', KEYS[1], 'ls') or ''
-- Built by hand: cjson would print the 16-digit seq in floating point.
local json = '{"userId":' .. cjson.encode(ARGV[4]) .. ',"connections":' .. string.format('%d', total)
  .. ',"seq":' .. seq_s .. ',"lastSeen":' .. (ls == '' and 'null' or ls)
if why ~= '' then
  json = json .. ',"reason":' .. cjson.encode(why)
end
redis.call(ARGV[8], ARGV[7], json .. '}')
return {string.format('%d', total), string.format('%d', previous), seq_s, ls, why}
