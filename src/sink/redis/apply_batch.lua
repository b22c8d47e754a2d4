-- walcast: apply one batch of a tenant's events to Redis atomically.
-- Every key is in the tenant's hash slot (<prefix>:{tenant}:...).
--
-- KEYS[1] applied watermark hash   KEYS[2] event stream
-- KEYS[3] epoch marker             KEYS[4] stream commit-time index (zset)
-- ARGV[1] expected epoch ("" = do not check)
-- ARGV[2] end LSN of the transaction this batch completes ("" = none)
-- ARGV[3] stream MAXLEN ("" = none)
-- ARGV[4] trim entries committed before this unix time ("" = none)
-- ARGV[5] row key prefix            ARGV[6] row index-membership key prefix
-- ARGV[7] number of entries, then per entry:
--   sortable id ("" = a snapshot row: no guard, no stream entry), stream id,
--   event JSON, commit unix time, op count, ops...
-- Ops:
--   R key rows_set rowidx idxsets ttl format n_idx idx... payload
--       (N: the same for a row that cannot exist yet, skipping the clean-up)
--       (format h: n_fields field value ...; format j: json)
--   D key rows_set rowidx
--   T rows_set idxsets
-- An entry whose sortable id is not above the watermark was applied before
-- (a replay): it is skipped whole. Returns the number of entries applied.

local epoch = redis.call('GET', KEYS[3])
if ARGV[1] ~= '' and epoch ~= ARGV[1] then
  return redis.error_reply('WALCAST_EPOCH the tenant epoch marker is gone: Redis lost its data')
end
local last = redis.call('HGET', KEYS[1], 'last_id') or ''
local last_event = nil
local row_prefix, rowidx_prefix = ARGV[5], ARGV[6]
local i = 8
local applied = 0
-- Index sets already recorded in their table's idxsets during this call.
local registered = {}

local function drop_memberships(key, rowidx)
  local sets = redis.call('SMEMBERS', rowidx)
  for _, s in ipairs(sets) do redis.call('SREM', s, key) end
  redis.call('DEL', rowidx)
end

for _ = 1, tonumber(ARGV[7]) do
  local sortable, stream_id, json, commit_time, nops =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  i = i + 5
  local fresh = sortable == '' or sortable > last
  for _ = 1, nops do
    local kind = ARGV[i]
    if kind == 'R' or kind == 'N' then
      local key, rows, rowidx, idxsets, ttl, format, nidx =
        ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], tonumber(ARGV[i + 5]), ARGV[i + 6], tonumber(ARGV[i + 7])
      i = i + 8
      local idx_first = i
      i = i + nidx
      -- 'N': a row that cannot exist yet (an INSERT by the replica identity,
      -- a snapshot row after the clear): nothing to clean up first.
      if fresh and kind == 'R' then
        drop_memberships(key, rowidx)
        redis.call('DEL', key)
      end
      if format == 'h' then
        local nfields = tonumber(ARGV[i])
        if fresh and nfields > 0 then
          redis.call('HSET', key, unpack(ARGV, i + 1, i + 2 * nfields))
        end
        i = i + 1 + 2 * nfields
      else
        if fresh then redis.call('SET', key, ARGV[i]) end
        i = i + 1
      end
      if fresh then
        redis.call('SADD', rows, key)
        for k = idx_first, idx_first + nidx - 1 do
          redis.call('SADD', ARGV[k], key)
          redis.call('SADD', rowidx, ARGV[k])
          if not registered[ARGV[k]] then
            redis.call('SADD', idxsets, ARGV[k])
            registered[ARGV[k]] = true
          end
        end
        if ttl > 0 then redis.call('EXPIRE', key, ttl) end
      end
    elseif kind == 'D' then
      local key, rows, rowidx = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
      i = i + 4
      if fresh then
        drop_memberships(key, rowidx)
        redis.call('DEL', key)
        redis.call('SREM', rows, key)
      end
    elseif kind == 'T' then
      local rows, idxsets = ARGV[i + 1], ARGV[i + 2]
      i = i + 3
      if fresh then
        for _, key in ipairs(redis.call('SMEMBERS', rows)) do
          redis.call('DEL', key)
          redis.call('DEL', rowidx_prefix .. string.sub(key, #row_prefix + 1))
        end
        for _, s in ipairs(redis.call('SMEMBERS', idxsets)) do redis.call('DEL', s) end
        redis.call('DEL', rows, idxsets)
      end
    else
      return redis.error_reply('WALCAST_BUG unknown op ' .. tostring(kind))
    end
  end
  if fresh and sortable ~= '' then
    if ARGV[3] ~= '' then
      redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], stream_id, 'event', json)
    else
      redis.call('XADD', KEYS[2], stream_id, 'event', json)
    end
    last = sortable
    last_event = stream_id
    applied = applied + 1
    if ARGV[4] ~= '' then
      redis.call('ZADD', KEYS[4], 'NX', commit_time, stream_id)
    end
  end
end

if last_event then
  redis.call('HSET', KEYS[1], 'last_id', last, 'event_id', last_event)
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], 'end_lsn', ARGV[2])
end
if ARGV[4] ~= '' then
  -- Age-based retention: drop stream entries committed before the cut-off.
  local old = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[4])
  if #old > 0 then
    local keep = redis.call('ZRANGEBYSCORE', KEYS[4], ARGV[4], '+inf', 'LIMIT', 0, 1)
    if #keep > 0 then
      redis.call('XTRIM', KEYS[2], 'MINID', keep[1])
    else
      redis.call('XTRIM', KEYS[2], 'MAXLEN', 0)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[4])
  end
end
return applied
