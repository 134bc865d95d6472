-- Raises a day's peak of concurrent connections.
-- KEYS[1] the day's peak key, ARGV[1] connections now, ARGV[2] its TTL (ms).
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
