-- The alert engine's commit: one call per batch of a partition's worker, run atomically by Redis
-- (services/alert_engine/commit.py). Every key is of that one partition (hash tag {p<n>}): one Redis Cluster slot.
--
-- First the fence (commit.py puts shared.ownership.LEASE_CHECK in front of this text: KEYS[1..2], ARGV[1..3]): the
-- partition's lease must still hold this replica's value, or have expired untaken (else the error FENCED: another
-- replica owns the partition now and this one writes nothing); a passing check extends the lease. Last the worker's
-- new offsets (the last entry id read of each input stream) in the partition's state hash: alerts, records and
-- offsets land together or not at all, so a kill -9 anywhere re-reads exactly what was not committed, and the alert
-- ids make nothing double.
-- Per fire, in order: its alert id seen before? (a replay: 0) -> a resolve with no firing alert of its run published
-- (its firing was cooled down, or never sent: -2) -> its fingerprint cooling down? (-1) -> else publish (1): XADD to
-- the partition's alerts stream, PUBLISH; a firing alert marks its fingerprint open, a resolve closes it. Then the
-- rule state rows of the fingerprints the call touched.
-- The rows were built by the engine from the answer it predicted per firing fire (its own cooldown knowledge); a
-- fingerprint with a fire whose answer differs (a replay, another replica's cooldown) gets no row here: the engine
-- writes the right one after. A resolve's answer changes no row ('*').
--
-- KEYS: the check's (the partition's lease, its fence counter), the partition's alerts stream, its rule state hash,
--       the worker's state hash, then per fire (fired-id key, cooldown key, open key)
-- ARGV: the check's (lease value, lease TTL ms, token; without a fence, for tools and tests committing outside a
--       worker: commit.py runs this text alone, and the three are ignored), then channel, alerts maxlen, fired ttl
--       ms, then two msgpack arrays (one argument each, not hundreds: the client packs every argument in Python): the
--       fires, each [alert bytes, now (exchange ms), cooldown ms (-1 forever, 0 none), fingerprint, predicted 1|0|*,
--       state firing|resolved]; the rows, flat [fingerprint, packed row, ...]; then the offsets as a msgpack array,
--       flat [field, entry id, ...].
-- Returns per fire: 1 published, 0 duplicate id (replay), -1 cooling down, -2 a resolve of nothing published.
local fires, rows_in = cmsgpack.unpack(ARGV[7]), cmsgpack.unpack(ARGV[8])
local ttl = ARGV[6]
local out, off = {}, {}
for i, f in ipairs(fires) do
  local kf, kc, ko = KEYS[3 + 3 * i], KEYS[4 + 3 * i], KEYS[5 + 3 * i]
  local data, now, cd, fp, predicted, state = f[1], f[2], f[3], f[4], f[5], f[6]
  local resolve = state == 'resolved'
  local r = 1
  if resolve then
    if redis.call('EXISTS', kf) == 1 then
      r = 0
    elseif redis.call('DEL', ko) == 0 then
      r = -2
    else
      redis.call('SET', kf, now, 'PX', ttl)
    end
  elseif cd == 0 then
    -- no cooldown: the id's first publish is the only test (one call: set unless it exists)
    if not redis.call('SET', kf, now, 'PX', ttl, 'NX') then r = 0 end
  elseif redis.call('EXISTS', kf) == 1 then
    r = 0
  else
    local untl = redis.call('GET', kc)
    if untl then
      untl = tonumber(untl)
      if untl < 0 or now < untl then r = -1 end
    end
    if r == 1 then
      if cd < 0 then
        redis.call('SET', kc, -1)
      else
        -- the cooldown ends in exchange time, which may run slower than the wall clock a TTL counts (an engine
        -- restarting, Redis away, a replay): the key lives as long as the alert ids, and its value decides
        redis.call('SET', kc, now + cd, 'PX', math.max(cd, tonumber(ttl)))
      end
      redis.call('SET', kf, now, 'PX', ttl)
    end
  end
  if r == 1 then
    if not resolve then redis.call('SET', ko, 1, 'PX', ttl) end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'd', data)
    redis.call('PUBLISH', ARGV[4], data)
  end
  if predicted ~= '*' and (r == 1) ~= (predicted == 1) then off[fp] = true end
  out[i] = r
end
local rows = {}
for i = 1, #rows_in, 2 do
  if not off[rows_in[i]] then
    rows[#rows + 1] = rows_in[i]
    rows[#rows + 1] = rows_in[i + 1]
  end
  if #rows >= 2000 or (i + 1 >= #rows_in and #rows > 0) then  -- (unpack's stack limit)
    redis.call('HSET', KEYS[4], unpack(rows))
    rows = {}
  end
end
local offsets = cmsgpack.unpack(ARGV[9])
if #offsets > 0 then redis.call('HSET', KEYS[5], unpack(offsets)) end
return out
