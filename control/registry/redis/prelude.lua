-- Shared by every registry script. All keys share one hash tag, so each script
-- is atomic on one Redis (Cluster) slot and all changes have one total order.
local K_REV, K_EPOCH, K_INST, K_HEALTH, K_LEASE, K_EXP, K_CHANGES, K_SWEPT =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

-- Redis's clock, so every replica agrees on lease expiry.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A lease's meta is "<ttl_ms> <service/instance_id>".
local function lease_meta(lease)
  local meta = redis.call('HGET', K_LEASE, lease)
  if not meta then return nil, nil end
  local sp = string.find(meta, ' ', 1, true)
  return tonumber(string.sub(meta, 1, sp - 1)), string.sub(meta, sp + 1)
end

-- Bumps the revision and appends the change to the feed every replica tails.
local function append(op, field, data, health, reason, history)
  local rev = redis.call('INCR', K_REV)
  local epoch = redis.call('GET', K_EPOCH) or ''
  redis.call('XADD', K_CHANGES, 'MAXLEN', '~', history, '*',
    'rev', rev, 'epoch', epoch, 'op', op, 'field', field, 'data', data,
    'health', health, 'reason', reason)
  return rev
end

-- Removes an instance and its lease; appends the deletion.
local function remove(field, reason, history)
  local data = redis.call('HGET', K_INST, field)
  if not data then return nil end
  local health = redis.call('HGET', K_HEALTH, field) or 'SERVING'
  local lease = cjson.decode(data).lease_id
  redis.call('HDEL', K_INST, field)
  redis.call('HDEL', K_HEALTH, field)
  redis.call('HDEL', K_LEASE, lease)
  redis.call('ZREM', K_EXP, lease)
  return append('del', field, data, health, reason, history)
end
