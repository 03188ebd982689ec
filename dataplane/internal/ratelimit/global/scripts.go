package global

import "github.com/redis/go-redis/v9"

// Every script reads the clock from Redis TIME, so all data planes share one
// clock and their own skew cannot stretch or shrink a window. Times are in
// microseconds as Lua doubles (exact up to 2^53, centuries away). Numbers
// written back to Redis go through string.format because redis.call would
// otherwise format them with %.14g and silently drop precision.
//
// Every script takes n, the number of requests decided at once (coalescing,
// or tokens asked for a local batch), grants the largest k <= n that n
// sequential single-request calls at the same instant would have granted,
// and returns {granted, remaining, retry_after_us, reset_us}.
//
// The token bucket and GCRA also take max_wait_us (0: exact mode) and return
// a fifth value, first_wait_us: how long the first request granted must wait
// for its turn, negative while tokens are left; the k-th granted waits
// max(0, first_wait_us + (k-1)*interval). With max_wait_us > 0 a request is
// granted when its turn is at most max_wait_us away, and remaining goes
// negative while turns are reserved. A denied request changes no state
// beyond the refill, and its retry_after_us is the time until a request
// would be granted. Comparisons carry a 1e-9 token slack against float
// error, and first_wait_us subtracts the same slack so a request granted
// thanks to it does not wait.

// tokenBucketSrc: KEYS[1] hash {tokens, ts}. ARGV: limit, period_us, burst, n,
// max_wait_us. Holds up to burst tokens, refilled at limit per period; in
// queue mode the tokens may go down to -max_wait_us/interval.
const tokenBucketSrc = `
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local max_wait = tonumber(ARGV[5]) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local per_token = period / limit
local st = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(st[1])
local ts = tonumber(st[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) / per_token)
  ts = now
end
local granted = math.floor(tokens + max_wait / per_token + 1e-9)
if granted > n then granted = n end
if granted < 0 then granted = 0 end
local first_wait = math.ceil((1 - tokens - 1e-9) * per_token)
tokens = tokens - granted
local retry = 0
if granted < n then
  retry = math.ceil((1 - tokens) * per_token - max_wait)
  if retry < 1 then retry = 1 end
end
local reset = math.ceil((burst - tokens) * per_token)
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(reset / 1000) + 1000)
local remaining = math.floor(tokens + 1e-9)
return {granted, remaining, retry, reset, first_wait}
`

// gcraSrc: KEYS[1] string, the theoretical arrival time (TAT).
// ARGV: interval_us (period/limit, may be fractional), burst, n, max_wait_us.
// Admits a request when it keeps TAT - now within burst intervals, plus
// max_wait_us in queue mode.
const gcraSrc = `
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4]) or 0
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local cap = burst * interval
local granted = math.floor((cap + max_wait - (tat - now)) / interval + 1e-9)
if granted > n then granted = n end
if granted < 0 then granted = 0 end
local first_wait = math.ceil(tat + interval - cap - now - 1e-9 * interval)
tat = tat + granted * interval
local remaining = math.floor((cap - (tat - now)) / interval + 1e-9)
local retry = 0
if granted < n then
  retry = math.ceil(tat - now - cap - max_wait + interval)
  if retry < 1 then retry = 1 end
end
local reset = math.ceil(tat - now)
if granted > 0 then
  redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil(reset / 1000) + 1000)
end
return {granted, remaining, retry, reset, first_wait}
`

// slidingWindowSrc: KEYS[1] sorted set of admitted request times (an exact
// sliding log), KEYS[2] a sequence making members unique.
// ARGV: limit, period_us, n. Memory is O(limit) per key.
const slidingWindowSrc = `
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - period))
local count = redis.call('ZCARD', KEYS[1])
local granted = limit - count
if granted > n then granted = n end
if granted < 0 then granted = 0 end
if granted > 0 then
  local seq = redis.call('INCRBY', KEYS[2], granted)
  local score = string.format('%d', now)
  local i = 1
  while i <= granted do
    local args = {}
    local j = i
    while j <= granted and j < i + 500 do
      args[#args + 1] = score
      args[#args + 1] = string.format('%d', seq - granted + j)
      j = j + 1
    end
    redis.call('ZADD', KEYS[1], unpack(args))
    i = j
  end
  local ttl = math.ceil(period / 1000) + 1000
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  count = count + granted
end
local retry = 0
if granted < n then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] then retry = tonumber(oldest[2]) + period - now end
  if retry < 1 then retry = 1 end
end
local reset = 0
if count > 0 then
  local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  reset = tonumber(newest[2]) + period - now
end
return {granted, limit - count, retry, reset}
`

// fixedWindowSrc: KEYS[1] hash {w, c}: the window number and its count.
// ARGV: limit, period_us, n. Windows are aligned to multiples of period since
// the Unix epoch so every data plane agrees on them. Up to 2*limit requests
// can pass around a window edge; that is the algorithm's documented cost.
const fixedWindowSrc = `
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local w = math.floor(now / period)
local st = redis.call('HMGET', KEYS[1], 'w', 'c')
local c = 0
if tonumber(st[1]) == w then c = tonumber(st[2]) or 0 end
local granted = limit - c
if granted > n then granted = n end
if granted < 0 then granted = 0 end
c = c + granted
local left = (w + 1) * period - now
redis.call('HSET', KEYS[1], 'w', string.format('%d', w), 'c', string.format('%d', c))
redis.call('PEXPIRE', KEYS[1], math.ceil(left / 1000) + 1000)
local retry = 0
if granted < n then retry = left end
return {granted, limit - c, retry, left}
`

// scripts holds one go-redis Script per algorithm. Script.Run sends EVALSHA
// and falls back to EVAL (which also reloads the script) on NOSCRIPT, e.g.
// after SCRIPT FLUSH, a restart or a failover to a replica.
type scripts struct {
	tokenBucket   *redis.Script
	gcra          *redis.Script
	slidingWindow *redis.Script
	fixedWindow   *redis.Script
}

func newScripts() scripts {
	return scripts{
		tokenBucket:   redis.NewScript(tokenBucketSrc),
		gcra:          redis.NewScript(gcraSrc),
		slidingWindow: redis.NewScript(slidingWindowSrc),
		fixedWindow:   redis.NewScript(fixedWindowSrc),
	}
}
