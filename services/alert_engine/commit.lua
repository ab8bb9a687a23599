-- The alert engine's commit: one call per batch that fires, run atomically by Redis (services/alert_engine/commit.py).
--
-- Per fire, in order: its alert id seen before? (a replay: 0) -> a resolve with no firing alert of its run published
-- (its firing was cooled down, or never sent: -2) -> its fingerprint cooling down? (-1) -> else publish (1): XADD to
-- the alerts and history streams, PUBLISH; a firing alert marks its fingerprint open, a resolve closes it. Then the
-- RULE_STATE rows of the fingerprints the batch touched, and the batch's XACKs: a candle is acked only together with
-- its gate decisions and alert writes.
-- The rows were built by the engine from the answer it predicted per firing fire (its own cooldown knowledge); a
-- fingerprint with a fire whose answer differs (a replay, another replica's cooldown) gets no row here: the engine
-- writes the right one after. A resolve's answer changes no row ('*').
--
-- KEYS: alerts stream, history stream, RULE_STATE, per fire (fired-id key, cooldown key, open key),
--       per ack group (stream)
-- ARGV: channel, alerts maxlen, history maxlen, fired ttl ms, group, then three msgpack arrays (one argument each, not
--       hundreds: the client packs every argument in Python): the fires, each [alert bytes, now (exchange ms),
--       cooldown ms (-1 forever, 0 none), fingerprint, predicted 1|0|*, state firing|resolved]; the rows, flat
--       [fingerprint, packed row, ...]; the ack groups, each [ids...] (its stream is its key).
-- Returns per fire: 1 published, 0 duplicate id (replay), -1 cooling down, -2 a resolve of nothing published.
local fires, rows_in, acks = cmsgpack.unpack(ARGV[6]), cmsgpack.unpack(ARGV[7]), cmsgpack.unpack(ARGV[8])
local ttl = ARGV[4]
local out, off = {}, {}
for i, f in ipairs(fires) do
  local kf, kc, ko = KEYS[1 + 3 * i], KEYS[2 + 3 * i], KEYS[3 + 3 * i]
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
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'd', data)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'd', data)
    redis.call('PUBLISH', ARGV[1], data)
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
    redis.call('HSET', KEYS[3], unpack(rows))
    rows = {}
  end
end
for i, ids in ipairs(acks) do
  for j = 1, #ids, 1000 do  -- (unpack's stack limit)
    redis.call('XACK', KEYS[3 + 3 * #fires + i], ARGV[5], unpack(ids, j, math.min(j + 999, #ids)))
  end
end
return out
