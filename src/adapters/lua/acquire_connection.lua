-- Takes an org-wide connection lease if the organization holds fewer than
-- the limit. Expired leases (their holder stopped refreshing) are dropped
-- first. Time comes from the Redis server, so replicas' clocks don't matter.
-- KEYS[1] lease zset (member = lease id, score = expiry ms)
-- ARGV[1] limit, ARGV[2] lease id, ARGV[3] lease ttl ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
