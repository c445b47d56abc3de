-- Deletes a consumer group. KEYS[1] stream, KEYS[2] the nack-reason hash.
-- ARGV[1] group. Returns 1 (deleted), 0 (no such group) or -1 (no stream).
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local n = redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
if n == 1 then
  -- Its last nack reasons (`group|position`) go with it.
  local prefix = ARGV[1] .. '|'
  local cursor = '0'
  repeat
    local page = redis.call('HSCAN', KEYS[2], cursor, 'MATCH', '*', 'COUNT', 500)
    cursor = page[1]
    for i = 1, #page[2], 2 do
      local f = page[2][i]
      if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[2], f) end
    end
  until cursor == '0'
end
return n
