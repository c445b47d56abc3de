-- Token bucket. ARGV: rate, per (us), burst. State: hash {u = tokens x per, t = when}.
-- Integer units (tokens x per) keep refill exact; config bounds keep them below 2^53.
-- Returns {allowed, remaining, reset us, retry-after us}.
local rate, per, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local full = burst * per
local now = now_us()
local stored = redis.call('HMGET', key, 'u', 't')
local units, last = tonumber(stored[1]), tonumber(stored[2])
if not units or not last then units, last = full, now end
if now > last then
  local missing = full - units
  if (now - last) >= math.ceil(missing / rate) then
    units = full
  else
    units = units + (now - last) * rate
  end
  last = now
end
local allowed = 0
if units >= per then
  units = units - per
  allowed = 1
end
local reset = math.ceil((full - units) / rate)
local retry = 0
if allowed == 0 then retry = math.ceil((per - units) / rate) end
redis.call('HSET', key, 'u', int(units), 't', int(last))
redis.call('PEXPIRE', key, ttl_ms(reset))
return {allowed, math.floor(units / per), reset, retry}
