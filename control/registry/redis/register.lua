-- ARGV: field, instance json, health, lease id, ttl ms, history, epoch to
-- create if the registry is new, lowest revision to start a new registry at.
local epoch = redis.call('GET', K_EPOCH)
if not epoch then
  epoch = ARGV[7]
  redis.call('SET', K_EPOCH, epoch)
  if tonumber(redis.call('GET', K_REV) or '0') < tonumber(ARGV[8]) then
    redis.call('SET', K_REV, ARGV[8])
  end
end
local old = redis.call('HGET', K_INST, ARGV[1])
if old then
  local old_lease = cjson.decode(old).lease_id
  redis.call('HDEL', K_LEASE, old_lease)
  redis.call('ZREM', K_EXP, old_lease)
end
redis.call('HSET', K_INST, ARGV[1], ARGV[2])
redis.call('HSET', K_HEALTH, ARGV[1], ARGV[3])
redis.call('HSET', K_LEASE, ARGV[4], ARGV[5] .. ' ' .. ARGV[1])
redis.call('ZADD', K_EXP, now_ms() + tonumber(ARGV[5]), ARGV[4])
local rev = append('put', ARGV[1], ARGV[2], ARGV[3], '', ARGV[6])
return {epoch, rev}
