-- A replica's periodic exchange for one organization: refreshes the leases
-- it holds and, for share-mode tiers (ARGV[3] > 0), records its demand and
-- returns its share of the org's QPS in milli-queries per second, in
-- proportion to demand (each live replica counts one extra, so an idle one
-- keeps a small share). Returns -1 when no share was asked for.
-- KEYS[1] lease zset, KEYS[2] demand hash (replica -> "demand:at_ms")
-- ARGV[1] replica id, ARGV[2] lease ttl ms, ARGV[3] qps, ARGV[4] demand,
-- ARGV[5] demand max age ms, ARGV[6..] lease ids held by this replica
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
for i = 6, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
if #ARGV >= 6 then
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
local qps = tonumber(ARGV[3])
if qps == 0 then
  return -1
end
local max_age = tonumber(ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4] .. ':' .. now)
redis.call('PEXPIRE', KEYS[2], max_age * 2)
local all = redis.call('HGETALL', KEYS[2])
local total, n = 0, 0
for i = 1, #all, 2 do
  local d, at = string.match(all[i + 1], '^(%d+):(%d+)$')
  if d == nil or now - tonumber(at) > max_age then
    redis.call('HDEL', KEYS[2], all[i])
  else
    total = total + tonumber(d)
    n = n + 1
  end
end
return math.floor(qps * 1000 * (tonumber(ARGV[4]) + 1) / (total + n))
