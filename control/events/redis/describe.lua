-- A topic's description. KEYS[1] stream, KEYS[2] meta, KEYS[3] dead-letter stream.
-- Returns {exists, length, first, last, max_len, max_age_ms, dead letters,
-- {{name, consumers, pending, lag, last delivered}...}}.
local exists = redis.call('EXISTS', KEYS[1]) + redis.call('EXISTS', KEYS[2])
if exists == 0 then return {0} end
local len, first, last, groups = 0, '', '', {}
if redis.call('EXISTS', KEYS[1]) == 1 then
  local s = redis.call('XINFO', 'STREAM', KEYS[1])
  local info = {}
  for i = 1, #s, 2 do info[s[i]] = s[i + 1] end
  len = info['length']
  last = info['last-generated-id']
  if info['first-entry'] then first = info['first-entry'][1] end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local gi = {}
    for i = 1, #g, 2 do gi[g[i]] = g[i + 1] end
    local lag = gi['lag']
    if not lag then
      -- Redis cannot tell (the stream was trimmed or ids were set): count.
      lag = #redis.call('XRANGE', KEYS[1], '(' .. gi['last-delivered-id'], '+', 'COUNT', 100000)
    end
    groups[#groups + 1] = {gi['name'], gi['consumers'], gi['pending'], lag, gi['last-delivered-id']}
  end
end
local maxlen = redis.call('HGET', KEYS[2], 'max_len') or '0'
local maxage = redis.call('HGET', KEYS[2], 'max_age_ms') or '0'
return {1, len, first, last, maxlen, maxage, redis.call('XLEN', KEYS[3]), groups}
