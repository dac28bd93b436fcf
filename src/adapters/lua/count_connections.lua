-- Counts an organization's live org-wide connection leases (all replicas),
-- dropping expired ones first. Time comes from the Redis server.
-- KEYS[1] lease zset (member = lease id, score = expiry ms)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
