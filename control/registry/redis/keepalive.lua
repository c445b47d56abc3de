-- ARGV: lease id, health ('' keeps it), history.
-- Returns {found, ttl ms, expiry ms, epoch, revision of a health change or 0}.
local ttl, field = lease_meta(ARGV[1])
if not ttl then return {0, 0, 0, '', 0} end
local expires = now_ms() + ttl
redis.call('ZADD', K_EXP, expires, ARGV[1])
local rev = 0
if ARGV[2] ~= '' and redis.call('HGET', K_HEALTH, field) ~= ARGV[2] then
  redis.call('HSET', K_HEALTH, field, ARGV[2])
  rev = append('put', field, redis.call('HGET', K_INST, field), ARGV[2], '', ARGV[3])
end
return {1, ttl, expires, redis.call('GET', K_EPOCH) or '', rev}
