-- Fixed window. ARGV: limit, window (us). State: hash {i = window number, c = count}.
-- Returns {allowed, remaining, reset us, retry-after us}.
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = now_us()
local index = math.floor(now / window)
local reset = (index + 1) * window - now
local count = 0
local stored = redis.call('HMGET', key, 'i', 'c')
if tonumber(stored[1]) == index then count = tonumber(stored[2]) end
if count < limit then
  count = count + 1
  redis.call('HSET', key, 'i', int(index), 'c', int(count))
  redis.call('PEXPIRE', key, ttl_ms(reset))
  return {1, limit - count, reset, 0}
end
return {0, 0, reset, reset}
