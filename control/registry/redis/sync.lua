-- A replica's (re)synchronisation with Redis.
-- ARGV[1] mode: 'check' reads only; 'init' creates the registry if it is
-- missing; 'restore' recreates a lost registry from the caller's view.
-- ARGV[2] epoch and ARGV[3] revision to create it at ('init': a fresh epoch and
-- the caller's revision; 'restore': the caller's view's). ARGV[4] default ttl.
-- 'restore' then takes groups of 5: field, json, health, lease id, ttl ms.
-- Returns {'missing'} or {'ok', epoch, revision, last feed id, inst, health}.
local epoch = redis.call('GET', K_EPOCH)
if not epoch then
  if ARGV[1] == 'check' then return {'missing'} end
  epoch = ARGV[2]
  redis.call('SET', K_EPOCH, epoch)
  redis.call('SET', K_REV, ARGV[3])
  if ARGV[1] == 'restore' then
    local now = now_ms()
    for i = 5, #ARGV, 5 do
      redis.call('HSET', K_INST, ARGV[i], ARGV[i + 1])
      redis.call('HSET', K_HEALTH, ARGV[i], ARGV[i + 2])
      redis.call('HSET', K_LEASE, ARGV[i + 3], ARGV[i + 4] .. ' ' .. ARGV[i])
      redis.call('ZADD', K_EXP, now + tonumber(ARGV[i + 4]), ARGV[i + 3])
    end
  end
end
local last = redis.call('XREVRANGE', K_CHANGES, '+', '-', 'COUNT', 1)
local last_id = '0-0'
if #last > 0 then last_id = last[1][1] end
return {'ok', epoch, tonumber(redis.call('GET', K_REV) or '0'), last_id,
  redis.call('HGETALL', K_INST), redis.call('HGETALL', K_HEALTH)}
