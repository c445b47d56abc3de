-- Run by every replica every sweep interval. Removes lapsed leases exactly
-- once (the script is atomic), so expiry needs no leader and survives the
-- loss of any replica.
-- ARGV: outage gap ms, batch size, history.
-- Returns {-1, leases extended} after an outage, else {0, leases expired}.
local now = now_ms()
local last = tonumber(redis.call('GET', K_SWEPT) or '0')
redis.call('SET', K_SWEPT, now)
if (last == 0 or now - last > tonumber(ARGV[1])) and redis.call('ZCARD', K_EXP) > 0 then
  -- No replica swept for a while (or none ever did on this data): every
  -- replica was cut off from Redis (or down), so no instance could renew. Give each lease a fresh TTL from now
  -- instead of expiring everything at once.
  local all = redis.call('ZRANGE', K_EXP, 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    local ttl = lease_meta(all[i])
    if ttl and tonumber(all[i + 1]) < now + ttl then
      redis.call('ZADD', K_EXP, now + ttl, all[i])
    end
  end
  return {-1, #all / 2}
end
local due = redis.call('ZRANGEBYSCORE', K_EXP, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local n = 0
for _, lease in ipairs(due) do
  local ttl, field = lease_meta(lease)
  if field and remove(field, 'lease expired', ARGV[3]) then
    n = n + 1
  else
    redis.call('ZREM', K_EXP, lease)
  end
end
return {0, n}
