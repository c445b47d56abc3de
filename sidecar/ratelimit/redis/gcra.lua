-- GCRA. ARGV: emission interval T (us), burst. State: the theoretical arrival time.
-- Returns {allowed, remaining, reset us, retry-after us}.
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tau = interval * burst
local now = now_us()
local tat = tonumber(redis.call('GET', key)) or now
if tat < now then tat = now end
local next_tat = tat + interval
if next_tat - now <= tau then
  redis.call('SET', key, int(next_tat), 'PX', ttl_ms(next_tat - now))
  return {1, math.floor((tau - (next_tat - now)) / interval), next_tat - now, 0}
end
return {0, 0, tat - now, next_tat - tau - now}
