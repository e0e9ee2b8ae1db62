package cluster

import "github.com/redis/rueidis"

// The scripts run atomically in Redis (EVALSHA; rueidis loads a script
// with EVAL the first time Redis answers NOSCRIPT). Times are passed in
// microseconds, which Lua's doubles hold exactly; node liveness uses
// Redis's own clock (TIME), so replicas with skewed clocks agree on it.
// Every key carries the same hash tag, so in Redis Cluster they share one
// slot, as scripts need.

// common is prepended to the scripts that need it: f formats a number
// without an exponent; readAlive(nodes) names the nodes' sorted set and
// isAlive(n) asks it whether n's liveness is current (one ZSCORE per node
// a call meets, at one TIME: cheaper than reading every live node, which
// most admissions never need); sum adds the live nodes' fields of a count
// and drops dead nodes' fields.
const common = `
local function f(x) return string.format('%.0f', x) end
local function nowms()
  local tm = redis.call('TIME')
  return tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
end
local alive, nodesKey, now0 = {}, nil, nil
local function readAlive(key) nodesKey = key end
local function isAlive(n)
  local a = alive[n]
  if a == nil then
    now0 = now0 or nowms()
    local sc = redis.call('ZSCORE', nodesKey, n)
    a = sc ~= false and tonumber(sc) >= now0
    alive[n] = a
  end
  return a
end
local function sum(key)
  local v = redis.call('HGETALL', key)
  local s = 0
  for i = 1, #v, 2 do
    if isAlive(v[i]) then s = s + tonumber(v[i + 1]) else redis.call('HDEL', key, v[i]) end
  end
  return s
end
local dry, would = 0, 0
local function hit(r)
  local b = bit.lshift(1, r)
  if bit.band(dry, b) ~= 0 then would = bit.bor(would, b) return false end
  return true
end
local function incr(key, node, set)
  if redis.call('HINCRBY', key, node, 1) == 1 then redis.call('SADD', set, key) end
end
local function decr(key, node, set)
  if redis.call('HINCRBY', key, node, -1) <= 0 then
    redis.call('HDEL', key, node)
    redis.call('SREM', set, key)
  end
end
local function setTat(key, tat, now)
  redis.call('SET', key, f(tat), 'PX', f(math.floor((tat - now) / 1000) + 1))
end
local function respend(key, interval, now)
  if interval <= 0 then return end
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  setTat(key, tat + interval, now)
end
-- applyReleases gives back a batch of releases (limiter.SharedRelease,
-- encoded by releaseArgs) from KEYS[k] and ARGV[a] on: ARGV[a] = d, the
-- number of counts to decrement, ARGV[a + 1] = r, the number of
-- re-spends; KEYS[k .. k+d-1] the counts, ARGV[a+2 .. a+1+d] by how much
-- (this node's field; dropped at 0 or below, and the key from the node's
-- key set); KEYS[k+d .. k+d+r-1] rate keys, each with two ARGV after the
-- decrements: now µs, interval µs. Returns the KEYS index past the batch.
local function applyReleases(node, set, k, a)
  local d, r = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  for i = 0, d - 1 do
    local key = KEYS[k + i]
    if redis.call('HINCRBY', key, node, -tonumber(ARGV[a + 2 + i])) <= 0 then
      redis.call('HDEL', key, node)
      redis.call('SREM', set, key)
    end
  end
  for i = 0, r - 1 do
    respend(KEYS[k + d + i], tonumber(ARGV[a + 3 + d + 2 * i]), tonumber(ARGV[a + 2 + d + 2 * i]))
  end
end
local function refund(key, interval, now)
  if interval <= 0 then return end
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat > now then setTat(key, math.max(tat - interval, now), now) end
end
`

// admitScript: one admission. This node's queued releases
// (SharedAdmit.Releases) are applied first; then rates (GCRA, as
// limiter's rateTable) and the total, per-address and per-prefix counts
// are all checked, then all taken, or none. Reason numbers are
// limiter.Reason's.
//
// KEYS: nodes, total, addr count, prefix count, addr rate, prefix rate,
// this node's key set, the address's failure marker, then the releases'
// keys (applyReleases).
// ARGV: node, now µs, exempt, max_connections, max_per_ip,
// max_per_prefix, addr interval µs, addr burst, prefix interval µs,
// prefix burst, dry-run mask, then the releases' arguments.
// Returns {code, reason, limit, would, retry-at µs, failures}; code -1:
// this node is not registered (Redis lost its data).
var admitScript = rueidis.NewLuaScript(common + `
local node = ARGV[1]
local now = tonumber(ARGV[2])
readAlive(KEYS[1])
if not isAlive(node) then return {-1, 0, 0, 0, 0, 0} end
applyReleases(node, KEYS[7], 9, 12)
dry = tonumber(ARGV[11])
local tats = {}
local function rate(key, interval, burst, reason)
  if interval <= 0 then return nil end
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local tol = interval * (burst - 1)
  if tat - now > tol then
    if hit(reason) then return {1, reason, burst, would, tat - tol, 0} end
    return nil
  end
  tats[#tats + 1] = {key, tat + interval}
  return nil
end
local r = rate(KEYS[5], tonumber(ARGV[7]), tonumber(ARGV[8]), 3)
if r then return r end
r = rate(KEYS[6], tonumber(ARGV[9]), tonumber(ARGV[10]), 4)
if r then return r end
local function cap(key, limit, reason)
  if limit > 0 and sum(key) >= limit and hit(reason) then return {1, reason, limit, would, 0, 0} end
  return nil
end
local exempt = ARGV[3] == '1'
r = cap(KEYS[2], tonumber(ARGV[4]), 5)
if r then return r end
if not exempt then
  r = cap(KEYS[3], tonumber(ARGV[5]), 6)
  if r then return r end
  r = cap(KEYS[4], tonumber(ARGV[6]), 7)
  if r then return r end
end
for _, t in ipairs(tats) do setTat(t[1], t[2], now) end
incr(KEYS[2], node, KEYS[7])
if not exempt then
  incr(KEYS[3], node, KEYS[7])
  incr(KEYS[4], node, KEYS[7])
end
return {0, 0, 0, would, 0, redis.call('EXISTS', KEYS[8])}
`)

// releaseScript gives back a batch of releases (applyReleases).
// KEYS: this node's key set, then the releases' keys. ARGV: node, then
// the releases' arguments.
var releaseScript = rueidis.NewLuaScript(common + `
applyReleases(ARGV[1], KEYS[1], 2, 2)
return 1
`)

// loginScript counts a user on an address (max_per_user_ip) and gives
// back the connection's rate tokens.
// KEYS: nodes, user count, node key set, addr rate, prefix rate.
// ARGV: node, max, dry-run mask, now µs, addr refund µs, prefix refund µs.
// Returns {code, reason, limit, would}; code -1: not registered.
var loginScript = rueidis.NewLuaScript(common + `
local node = ARGV[1]
readAlive(KEYS[1])
if not isAlive(node) then return {-1, 0, 0, 0} end
dry = tonumber(ARGV[3])
local max = tonumber(ARGV[2])
if max > 0 then
  if sum(KEYS[2]) >= max and hit(9) then return {1, 9, max, would} end
  incr(KEYS[2], node, KEYS[3])
end
local now = tonumber(ARGV[4])
refund(KEYS[4], tonumber(ARGV[5]), now)
refund(KEYS[5], tonumber(ARGV[6]), now)
return {0, 0, 0, would}
`)

// succeededScript: a successful login gives back tokens not given back
// yet and forgets the user's failures on the address.
// KEYS: addr rate, prefix rate, the user's failure record.
// ARGV: now µs, addr refund µs, prefix refund µs, forget?
var succeededScript = rueidis.NewLuaScript(common + `
local now = tonumber(ARGV[1])
refund(KEYS[1], tonumber(ARGV[2]), now)
refund(KEYS[2], tonumber(ARGV[3]), now)
if ARGV[4] == '1' then redis.call('DEL', KEYS[3]) end
return 1
`)

// failureScript is limiter's LoginFailed and decide on shared records:
// a record is a hash {s: window start µs, c: count, r: recent attempt
// keys (a user's record) or user tags (an address's or prefix's)}.
// KEYS: user record, addr record, prefix record, failure marker, bans,
// bans version. ARGV: now µs, attempt key (0 unknown), user tag, window
// µs, failures, min_users, user_failures, spray_failures,
// prefix_failures, ban_time µs, shared?, prefix known-good?, addr ban
// field, prefix ban field, user ban field, user name, channel.
// Returns {counted, user count, addr count[, ban field, until µs,
// failures, narrowed]}.
var failureScript = rueidis.NewLuaScript(`
local function f(x) return string.format('%.0f', x) end
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[4])
local function load(key)
  local v = redis.call('HMGET', key, 's', 'c', 'r')
  local rec = {s = tonumber(v[1]), c = tonumber(v[2]) or 0, r = {}}
  if rec.s == nil or now - rec.s > window then
    rec.s, rec.c = now, 0
  elseif v[3] then
    for x in string.gmatch(v[3], '%d+') do rec.r[#rec.r + 1] = x end
  end
  return rec
end
local function has(rec, x)
  for _, y in ipairs(rec.r) do if y == x then return true end end
  return false
end
local function addUser(rec, x)
  if not has(rec, x) and #rec.r < 8 then rec.r[#rec.r + 1] = x end
  return #rec.r
end
local function save(key, rec)
  redis.call('HSET', key, 's', f(rec.s), 'c', rec.c, 'r', table.concat(rec.r, ' '))
  redis.call('PEXPIRE', key, f(math.floor((rec.s + window - now) / 1000) + 1))
end
local banTime = tonumber(ARGV[10])
local function ban(field, user, failures, narrowed)
  local old = redis.call('HGET', KEYS[5], field)
  if old then
    local u = tonumber(string.match(old, '^%d+'))
    if u and now < u then return nil end
  end
  local u = now + banTime
  local val = f(u)
  if user ~= '' then val = val .. ' ' .. user end
  redis.call('HSET', KEYS[5], field, val)
  redis.call('INCR', KEYS[6])
  redis.call('PUBLISH', ARGV[17], 'ban ' .. field .. ' ' .. val)
  return {field, u, failures, narrowed}
end
local ur, ar = load(KEYS[1]), load(KEYS[2])
local attempt = ARGV[2]
local counted = attempt == '0' or not has(ur, attempt)
if counted and attempt ~= '0' then
  if #ur.r >= 8 then table.remove(ur.r, 1) end
  ur.r[#ur.r + 1] = attempt
end
local b = nil
if counted then
  ur.c = ur.c + 1
  ar.c = ar.c + 1
  local users = addUser(ar, ARGV[3])
  local fails, minU, uf, spray = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local done = false
  if spray > 0 and ar.c >= spray then
    b, done = ban(ARGV[13], '', ar.c, 0), true
  elseif fails > 0 and ar.c >= fails and users >= minU then
    if ARGV[11] ~= '1' then
      b, done = ban(ARGV[13], '', ar.c, 0), true
    elseif ur.c >= 3 then
      b = ban(ARGV[15], ARGV[16], ar.c, 1)
      done = b ~= nil
    end
  end
  if not done and uf > 0 and ur.c >= uf then b = ban(ARGV[15], ARGV[16], ur.c, 0) end
  local pf = tonumber(ARGV[9])
  if pf > 0 then
    local pr = load(KEYS[3])
    pr.c = pr.c + 1
    local pusers = addUser(pr, ARGV[3])
    if b == nil and ARGV[12] ~= '1' and pr.c >= pf and pusers >= minU then b = ban(ARGV[14], '', pr.c, 0) end
    save(KEYS[3], pr)
  end
end
save(KEYS[1], ur)
save(KEYS[2], ar)
redis.call('SET', KEYS[4], '1', 'PX', f(math.floor(window / 1000) + 1))
local c = 0
if counted then c = 1 end
if b then return {c, ur.c, ar.c, b[1], b[2], b[3], b[4]} end
return {c, ur.c, ar.c}
`)

// pushBanScript stores a ban unless the store has it for longer, and
// publishes it. With ARGV[5] "1" (a node republishing the bans it holds
// after an outage) it also skips a ban that an unban made meanwhile lifted
// (KEYS[3] holds the field with the lifted ban's until: a ban not later
// than that is the one lifted). KEYS: bans, version, lifted. ARGV: field,
// until µs, user (or ""), channel, republish.
var pushBanScript = rueidis.NewLuaScript(`
if ARGV[5] == '1' then
  local t = redis.call('ZSCORE', KEYS[3], ARGV[1])
  if t and tonumber(t) >= tonumber(ARGV[2]) then return 0 end
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local u = tonumber(string.match(old, '^%d+'))
  if u and u >= tonumber(ARGV[2]) then return 0 end
end
local val = ARGV[2]
if ARGV[3] ~= '' then val = val .. ' ' .. ARGV[3] end
redis.call('HSET', KEYS[1], ARGV[1], val)
redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], 'ban ' .. ARGV[1] .. ' ' .. val)
return 1
`)

// heartbeatScript renews this node's liveness (Redis's clock).
// KEYS: nodes, instances. ARGV: node, instance id, ttl ms.
// Returns {was registered, previous instance, live nodes, {dead nodes}}.
var heartbeatScript = rueidis.NewLuaScript(`
local function f(x) return string.format('%.0f', x) end
local tm = redis.call('TIME')
local ms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local prev = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0')
local inst = redis.call('HGET', KEYS[2], ARGV[1]) or ''
redis.call('ZADD', KEYS[1], f(ms + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local reg = 0
if prev >= ms then reg = 1 end
return {reg, inst, redis.call('ZCOUNT', KEYS[1], ms, '+inf'), redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. f(ms))}
`)

// holderScript reads who holds a node id: Redis's time (ms), the node's
// liveness score (-1: none) and its instance entry ("": none).
// KEYS: nodes, instances. ARGV: node.
var holderScript = rueidis.NewLuaScript(`
local tm = redis.call('TIME')
local ms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
return {ms, tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '-1'), redis.call('HGET', KEYS[2], ARGV[1]) or ''}
`)

// sweepScript drops up to 500 of a dead node's contributions (all of its
// own, with force: a restarted node clearing its stale share); when none
// are left it forgets the node. KEYS: nodes, instances, the node's key
// set. ARGV: node, force?. Returns 1 while there is more to do.
var sweepScript = rueidis.NewLuaScript(`
local tm = redis.call('TIME')
local ms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[2] ~= '1' and score and tonumber(score) >= ms then return 0 end
local keys = redis.call('SPOP', KEYS[3], 500)
for _, k in ipairs(keys) do redis.call('HDEL', k, ARGV[1]) end
if redis.call('SCARD', KEYS[3]) > 0 then return 1 end
if ARGV[2] ~= '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
end
return 0
`)

// leaveScript takes a closing node out of Redis, unless another process
// took its id meanwhile (the instances hash names another instance): its
// instance entry goes, and its fields in the count hashes (up to 500 of
// its keys; after the releases were sent they count only the sessions
// still open, which end with the process). If its key set is then
// empty, the node leaves the sorted set; if not, its liveness is set to
// expire now, so that the others' heartbeats find it dead and sweep the
// rest (sweepScript), as for a node that died. Either way sums stop
// counting it at once. KEYS: nodes, instances, the node's key set.
// ARGV: node, instance id. Returns 0 (another process has the id), 1
// (gone) or 2 (left to the others' sweep).
var leaveScript = rueidis.NewLuaScript(`
local function f(x) return string.format('%.0f', x) end
local inst = redis.call('HGET', KEYS[2], ARGV[1])
if inst and inst ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
for _, k in ipairs(redis.call('SPOP', KEYS[3], 500)) do redis.call('HDEL', k, ARGV[1]) end
if redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
local tm = redis.call('TIME')
redis.call('ZADD', KEYS[1], f(tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000) - 1), ARGV[1])
return 2
`)

// rotateScript rotates the session ticket keys if they are due and this
// node holds (or takes) the rotation lease: prev ← cur ← next ← new, so
// every node has held a key as "next" (accepted, not yet used) for a
// whole period before any node encrypts with it.
// When Redis has no keys (the first node ever, or Redis came back empty
// after an outage) and this node holds keys, it stores them as they are,
// due for rotation, so the tickets issued meanwhile stay valid; a node
// without keys stores new ones.
// KEYS: keys hash, lease. ARGV: node, interval ms, lease ms, new key,
// second new key (for the first keys), and the keys this node holds:
// cur, prev, next ("" if none). Returns 1 if it rotated or stored new
// keys, 2 if it stored the keys it holds.
var rotateScript = rueidis.NewLuaScript(`
local function f(x) return string.format('%.0f', x) end
local tm = redis.call('TIME')
local ms = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if redis.call('HEXISTS', KEYS[1], 'cur') == 0 then
  if ARGV[6] ~= '' then
    redis.call('HSET', KEYS[1], 'cur', ARGV[6], 'at', '0')
    if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'prev', ARGV[7]) end
    redis.call('HSET', KEYS[1], 'next', ARGV[8] ~= '' and ARGV[8] or ARGV[5])
    return 2
  end
  redis.call('HSET', KEYS[1], 'cur', ARGV[4], 'next', ARGV[5], 'at', f(ms))
  return 1
end
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or '0')
if ms - at < tonumber(ARGV[2]) then return 0 end
local cur, nxt = redis.call('HGET', KEYS[1], 'cur'), redis.call('HGET', KEYS[1], 'next')
redis.call('HSET', KEYS[1], 'prev', cur, 'cur', nxt, 'next', ARGV[4], 'at', f(ms))
return 1
`)
