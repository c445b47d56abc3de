-- One consumer's fetch. KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3]
-- nack reasons. ARGV: group, consumer, count, visibility timeout ms, max
-- deliveries, claim (1/0), topic.
-- Claims expired leases first (XAUTOCLAIM bumps the delivery count); one past
-- max deliveries goes to the dead-letter stream with the reason and is acked.
-- Then new events (XREADGROUP >). Returns {{id, fields, count}...}, dead, {trimmed ids}.
local group, consumer, count = ARGV[1], ARGV[2], tonumber(ARGV[3])
local maxd, topic = tonumber(ARGV[5]), ARGV[7]
local out, dead, trimmed = {}, 0, {}

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return ''
end

if ARGV[6] == '1' then
  local r = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, ARGV[4], '0-0', 'COUNT', count)
  for _, entry in ipairs(r[2]) do
    local id, fields = entry[1], entry[2]
    local p = redis.call('XPENDING', KEYS[1], group, id, id, 1)
    local n = tonumber(p[1][4])
    if n > maxd then
      local why = redis.call('HGET', KEYS[3], group .. '|' .. id)
      local reason = 'not acked after ' .. (n - 1) .. ' deliveries'
      if why then reason = reason .. '; last nack: ' .. why end
      redis.call('XADD', KEYS[2], '*', 'e', field(fields, 'e'), 's', field(fields, 's'), 'v', field(fields, 'v'),
        'dt', topic, 'dg', group, 'dp', id, 'dn', n - 1, 'dr', reason)
      redis.call('XACK', KEYS[1], group, id)
      redis.call('HDEL', KEYS[3], group .. '|' .. id)
      dead = dead + 1
    else
      out[#out + 1] = {id, fields, n}
    end
  end
  for _, id in ipairs(r[3] or {}) do trimmed[#trimmed + 1] = id end
end
if #out < count then
  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count - #out, 'STREAMS', KEYS[1], '>')
  if r then
    for _, entry in ipairs(r[1][2]) do
      out[#out + 1] = {entry[1], entry[2], 1}
    end
  end
end
return {out, dead, trimmed}
