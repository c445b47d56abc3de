-- Append to an aggregate if it is at the expected version. KEYS[1] stream,
-- KEYS[2] aggregate list, KEYS[3] topic meta. ARGV: expected version ('' = any),
-- aggregate id, default max_len, default max_age ms, then envelope bytes.
-- The version of an event is its index in the list + 1. Returns {-1, current}
-- on a mismatch, else {new version, {positions}}.
local cur = redis.call('LLEN', KEYS[2])
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return {-1, cur} end
redis.call('HSETNX', KEYS[3], 'max_len', ARGV[3])
redis.call('HSETNX', KEYS[3], 'max_age_ms', ARGV[4])
local ids = {}
for i = 5, #ARGV do
  cur = cur + 1
  redis.call('RPUSH', KEYS[2], ARGV[i])
  ids[#ids + 1] = redis.call('XADD', KEYS[1], '*', 'e', ARGV[i], 's', ARGV[2], 'v', cur)
end
return {cur, ids}
