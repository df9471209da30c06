//! The server-side scripts: each fleet operation is one atomic script call, so one round trip, and nodes never
//! read-modify-write across calls. Times come from the Redis server's clock (`TIME`), not the nodes'.
//!
//! Keys, under the fleet's `name` prefix: `{name}:alive` (sorted set: node → expiry ms), `{name}:nodes`
//! (hash: node → heartbeat JSON), `{name}:leases:{site}` (hash: node → leases held), `{name}:rate:{site}`
//! (hash: bucket `t`okens and `ts`). A node's leases count only while it is alive, so a crashed node's
//! leases expire with its heartbeat.

use redis::Script;

/// `acquire(KEYS: leases, alive; ARGV: node, held, limit, want, ttl_ms) -> {granted, fleet total}`: sets this
/// node's count to what it holds, drops dead nodes' counts, grants what fits under the limit.
pub(crate) fn acquire() -> Script {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local node = ARGV[1]
local held = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
redis.call('ZADD', KEYS[2], now + ttl, node)
local total = 0
local h = redis.call('HGETALL', KEYS[1])
for i = 1, #h, 2 do
  local n = h[i]
  if n ~= node then
    local exp = redis.call('ZSCORE', KEYS[2], n)
    if exp and tonumber(exp) > now then
      total = total + tonumber(h[i + 1])
    else
      redis.call('HDEL', KEYS[1], n)
    end
  end
end
local grant = limit - total - held
if grant > want then grant = want end
if grant < 0 then grant = 0 end
if held + grant > 0 then
  redis.call('HSET', KEYS[1], node, held + grant)
  redis.call('PEXPIRE', KEYS[1], ttl * 20)
else
  redis.call('HDEL', KEYS[1], node)
end
return {grant, total + held + grant}
"#,
    )
}

/// `sync(KEYS: leases...; ARGV: node, ttl_ms, count...)`: sets this node's lease count on each site (after
/// releases, and on reconnecting, when Redis may have missed changes).
pub(crate) fn sync() -> Script {
    Script::new(
        r#"
local node = ARGV[1]
local ttl = tonumber(ARGV[2])
for i = 1, #KEYS do
  local c = tonumber(ARGV[i + 2])
  if c > 0 then
    redis.call('HSET', KEYS[i], node, c)
    redis.call('PEXPIRE', KEYS[i], ttl * 20)
  else
    redis.call('HDEL', KEYS[i], node)
  end
end
return #KEYS
"#,
    )
}

/// `heartbeat(KEYS: alive, nodes; ARGV: node, ttl_ms, info) -> {node, info, ...}`: marks this node alive,
/// forgets nodes whose heartbeat expired, returns every live node with its last heartbeat.
pub(crate) fn heartbeat() -> Script {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, n in ipairs(dead) do
  redis.call('ZREM', KEYS[1], n)
  redis.call('HDEL', KEYS[2], n)
end
local out = {}
for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  out[#out + 1] = n
  out[#out + 1] = redis.call('HGET', KEYS[2], n) or ''
end
return out
"#,
    )
}

/// `tokens(KEYS: bucket; ARGV: rate per s, want, capacity) -> {granted, wait_ms}`: a token bucket refilled at
/// `rate`; when nothing can be granted, how long until one token is there.
pub(crate) fn tokens() -> Script {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + (now - ts) * rate / 1000)
local grant = math.min(want, math.floor(tokens))
if grant < 0 then grant = 0 end
tokens = tokens - grant
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], 600000)
local wait = 0
if grant == 0 then wait = math.ceil((1 - tokens) * 1000 / rate) end
return {grant, wait}
"#,
    )
}
