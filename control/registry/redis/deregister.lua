-- ARGV: lease id, history. Returns {found, epoch, revision}.
local ttl, field = lease_meta(ARGV[1])
if not ttl then return {0, '', 0} end
local rev = remove(field, 'deregistered', ARGV[2]) or 0
return {1, redis.call('GET', K_EPOCH) or '', rev}
