-- Applies a topic's retention, never past an event some group has not acked.
-- KEYS[1] stream, KEYS[2] topic meta. Returns the number of events removed.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local function parse(id)
  local d = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, d - 1)), tonumber(string.sub(id, d + 1))
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local function after(id)
  local m, s = parse(id)
  return string.format('%d-%d', m, s + 1)
end
local maxlen = tonumber(redis.call('HGET', KEYS[2], 'max_len') or '0')
local maxage = tonumber(redis.call('HGET', KEYS[2], 'max_age_ms') or '0')
local target = nil -- remove every event strictly before target
local len = redis.call('XLEN', KEYS[1])
if maxlen > 0 and len > maxlen then
  local r = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(len - maxlen, 10000))
  target = after(r[#r][1])
end
if maxage > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local a = string.format('%d-0', now - maxage)
  if target == nil or less(target, a) then target = a end
end
if target == nil then return 0 end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local bound = after(info['last-delivered-id'])
  if tonumber(info['pending']) > 0 then
    local p = redis.call('XPENDING', KEYS[1], info['name'])
    if less(p[2], bound) then bound = p[2] end
  end
  if less(bound, target) then target = bound end
end
return redis.call('XTRIM', KEYS[1], 'MINID', target)
