-- Shared by every rate-limit script. KEYS[1] is the one key of one rule and
-- one client; its hash tag gives it its own Redis Cluster slot. Times are
-- microseconds from Redis's clock, so every proxy counts on the same clock.
local key = KEYS[1]

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Lua 5.1 turns numbers into strings with 14 significant digits, which
-- would round a microsecond timestamp: format integers explicitly.
local function int(x)
  return string.format('%.0f', x)
end

-- Expiry in ms for state that is fresh again after `us` microseconds, plus
-- a second of slack.
local function ttl_ms(us)
  return int(math.ceil(us / 1000) + 1000)
end
