-- Sliding log. ARGV: limit, window (us). State: list of admission times, oldest first.
-- Returns {allowed, remaining, reset us, retry-after us}.
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_us()
local newest = tonumber(redis.call('LINDEX', key, -1))
-- Keep the log sorted even if Redis's clock steps back.
if newest and newest > now then now = newest end
if newest and newest + window <= now then
  -- All expired (the key was idle): drop the log at once instead of one
  -- entry at a time.
  redis.call('DEL', key)
end
-- Otherwise each entry is popped once, by some later call: amortised O(1).
while true do
  local oldest = tonumber(redis.call('LINDEX', key, 0))
  if not oldest or oldest + window > now then break end
  redis.call('LPOP', key)
end
local len = redis.call('LLEN', key)
if len < limit then
  redis.call('RPUSH', key, int(now))
  redis.call('PEXPIRE', key, ttl_ms(window))
  return {1, limit - len - 1, window, 0}
end
local oldest = tonumber(redis.call('LINDEX', key, 0))
newest = tonumber(redis.call('LINDEX', key, -1))
return {0, 0, newest + window - now, oldest + window - now}
