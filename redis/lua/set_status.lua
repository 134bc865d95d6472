-- Sets or clears the status a user set; returns the user's new state.
-- (Prefixed with presence.lua.)
-- KEYS[1] the user's hash {<prefix>:v<vnode>}:user:<userId>
-- ARGV[1] user ID, ARGV[2] the status JSON without invisibleSince ('' clears),
-- ARGV[3] its expiry in ms ('' for none), ARGV[4] '1' when it is invisible,
-- ARGV[5] now (ms), ARGV[6] only if the stored expiry is this ('' always),
-- ARGV[7] the user's channel, ARGV[8] 'PUBLISH' or 'SPUBLISH',
-- ARGV[9] retention of an offline user's record (ms).
-- Returns nil when ARGV[6] did not match; else {total, presence JSON}.
local u = read_user(KEYS[1])
-- A lapsed status counts as none: its invisibility is over.
if u.se ~= nil and u.se ~= '' and tonumber(u.se) <= tonumber(ARGV[5]) and ARGV[6] == '' then
  u.iv = nil
end
if ARGV[6] ~= '' and (u.se or '') ~= ARGV[6] then
  return false
end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'st', 'se', 'iv')
  u.st, u.se, u.iv = nil, nil, nil
else
  redis.call('HSET', KEYS[1], 'st', ARGV[2])
  u.st = ARGV[2]
  if ARGV[3] == '' then
    redis.call('HDEL', KEYS[1], 'se')
    u.se = nil
  else
    redis.call('HSET', KEYS[1], 'se', ARGV[3])
    u.se = ARGV[3]
  end
  -- Invisible since the first of consecutive invisible settings: watchers
  -- saw the user go then, and must not see them leave twice.
  if ARGV[4] == '1' then
    if u.iv == nil or u.iv == '' then
      u.iv = ARGV[5]
      redis.call('HSET', KEYS[1], 'iv', u.iv)
    end
  else
    redis.call('HDEL', KEYS[1], 'iv')
    u.iv = nil
  end
end
u.seq = next_seq(u)
redis.call('HSET', KEYS[1], 'seq', u.seq)
if u.total == 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
end
local json = presence_json(u, ARGV[1])
redis.call(ARGV[8], ARGV[7], json)
return {string.format('%d', u.total), json}
