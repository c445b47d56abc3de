-- Publish a batch to one topic. KEYS[1] stream, KEYS[2] topic meta.
-- ARGV: idempotency key prefix, window ms, default max_len, default max_age ms,
-- then per event: idempotency key ('' = none), envelope bytes, subject.
-- Returns {position, duplicate 0/1} per event. A retried key returns the
-- position it was first stored at and stores nothing.
redis.call('HSETNX', KEYS[2], 'max_len', ARGV[3])
redis.call('HSETNX', KEYS[2], 'max_age_ms', ARGV[4])
local out = {}
for i = 5, #ARGV, 3 do
  local key, e, sub = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local prev = false
  if key ~= '' then prev = redis.call('GET', ARGV[1] .. key) end
  if prev then
    out[#out + 1] = {prev, 1}
  else
    local id = redis.call('XADD', KEYS[1], '*', 'e', e, 's', sub)
    if key ~= '' then redis.call('SET', ARGV[1] .. key, id, 'PX', ARGV[2]) end
    out[#out + 1] = {id, 0}
  end
end
return out
