-- Ack, nack or extend one delivered event, only by the consumer holding it.
-- KEYS[1] stream, KEYS[2] nack reasons. ARGV: op, group, consumer, id,
-- idle ms to set (nack: visibility timeout - delay), reason.
-- Returns {1, ''} done, {0, ''} not pending, {-1, owner} held by another consumer.
local group, id = ARGV[2], ARGV[4]
local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
if #p == 0 then return {0, ''} end
if p[1][2] ~= ARGV[3] then return {-1, p[1][2]} end
if ARGV[1] == 'ack' then
  redis.call('XACK', KEYS[1], group, id)
  redis.call('HDEL', KEYS[2], group .. '|' .. id)
elseif ARGV[1] == 'extend' then
  -- JUSTID: resets the idle time without counting a delivery.
  redis.call('XCLAIM', KEYS[1], group, ARGV[3], 0, id, 'JUSTID')
else
  redis.call('XCLAIM', KEYS[1], group, ARGV[3], 0, id, 'IDLE', ARGV[5], 'JUSTID')
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], group .. '|' .. id, ARGV[6]) end
end
return {1, ''}
