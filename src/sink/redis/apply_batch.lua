-- walcast: apply one batch of a tenant's events to Redis atomically.
-- Every key is in the tenant's hash slot (<prefix>:{tenant}:...).
--
-- The writer sends this script first in a MULTI/EXEC; the same transaction
-- then carries, as plain commands, each event's XADD (NOMKSTREAM) and the
-- writes of new rows that no other entry of the batch touches (see
-- src/sink/redis/mod.rs). Everything that reads before it writes is here.
--
-- KEYS[1] applied watermark hash   KEYS[2] event stream
-- KEYS[3] epoch marker             KEYS[4] stream commit-time index (zset)
-- ARGV[1] expected epoch ("" = do not check)
-- ARGV[2] end LSN of the transaction this batch completes ("" = none)
-- ARGV[3] stream MAXLEN ("" = none)
-- ARGV[4] trim entries committed before this unix time ("" = none)
-- ARGV[5] order guard: `applied.last_id` must be at least this ("" = none):
--         the last event of the batch sent before this one. If it is not
--         in, nothing here is written (WALCAST_ORDER).
-- ARGV[6] sortable id of the newest event of the batch ("" = none), and
-- ARGV[7] its stream id: the new watermark
-- ARGV[8] number of tables, then per table (numbered from 1 in this order):
--   row-index hash (row key -> its index sets, "\n"-separated), index-set
--   registry (set), row format (h: hash, j: JSON string)
-- then entries to the end of ARGV, each:
--   sortable id ("" = a snapshot row: no guard), stream id, op count, ops...
-- Ops (t: table number, key: the row's full key):
--   N t key n_idx idx... payload   a hot row that cannot exist yet (an
--                                  INSERT by the replica identity, a
--                                  snapshot row after the clear): no clean-up
--   R t key n_idx idx... payload   a hot row that may replace an older version
--   C t key ttl payload            a cold row kept for ttl seconds, unindexed
--   D t key                        the row is gone
--   T t                            every row of the table is gone
--   payload: format h: n_fields field value ... (the script adds the field
--   _event_id: the stream id, or "snapshot" for a snapshot row); format j:
--   the JSON text, _event_id included
-- An entry whose sortable id is not above the watermark was applied before
-- (a replay): it is skipped whole. Returns the number of entries applied.
--
-- Index-set and row-index writes are collected and issued once per set at
-- the end (one SADD with many members instead of one call per row).

local epoch = redis.call('GET', KEYS[3])
if ARGV[1] ~= '' and epoch ~= ARGV[1] then
  return redis.error_reply('WALCAST_EPOCH the tenant epoch marker is gone: Redis lost its data')
end
local last = redis.call('HGET', KEYS[1], 'last_id') or ''
if ARGV[5] ~= '' and last < ARGV[5] then
  return redis.error_reply('WALCAST_ORDER the batches before this one are not applied yet')
end
local newest, newest_id = ARGV[6], ARGV[7]
local advances = newest ~= '' and newest > last
local applied = 0

local tables = {}
local i = 9
for t = 1, tonumber(ARGV[8]) do
  -- meta: row key -> its index sets as written at the end ("" none), or
  -- false for a row that is gone; absent: ask the row-index hash.
  tables[t] = { rowindex = ARGV[i], idxsets = ARGV[i + 1], format = ARGV[i + 2], meta = {} }
  i = i + 3
end
-- Index set -> { row key = true }: members to add at the end.
local adds = {}
-- Index sets already recorded in their table's registry during this call.
local registered = {}

-- Calls `cmd key` with the items of `list` as further arguments, in slices
-- (Lua's unpack has a stack limit).
local function call_many(cmd, key, list)
  local n = #list
  local step = 1000
  for from = 1, n, step do
    redis.call(cmd, key, unpack(list, from, math.min(from + step - 1, n)))
  end
end

-- Removes a row from the index sets it is in (or was about to be added to).
local function clean(tbl, key)
  local m = tbl.meta[key]
  if m == nil then m = redis.call('HGET', tbl.rowindex, key) end
  if m and m ~= '' then
    for s in string.gmatch(m, '[^\n]+') do
      local pending = adds[s]
      if pending and pending[key] then
        pending[key] = nil
      else
        redis.call('SREM', s, key)
      end
    end
  end
end

-- Writes the collected row-index entries and index-set members.
local function flush_pending()
  for _, tbl in ipairs(tables) do
    local set, gone = {}, {}
    for key, m in pairs(tbl.meta) do
      if m then
        set[#set + 1] = key
        set[#set + 1] = m
      else
        gone[#gone + 1] = key
      end
    end
    if #set > 0 then call_many('HSET', tbl.rowindex, set) end
    if #gone > 0 then call_many('HDEL', tbl.rowindex, gone) end
    tbl.meta = {}
  end
  for s, members in pairs(adds) do
    local list = {}
    for key in pairs(members) do list[#list + 1] = key end
    if #list > 0 then call_many('SADD', s, list) end
  end
  adds = {}
end

-- Reads a payload at i and writes the row; returns the next index.
local function write_row(tbl, key, i, fresh, event_id)
  if tbl.format == 'h' then
    local nfields = tonumber(ARGV[i])
    if fresh then
      redis.call('HSET', key, '_event_id', event_id, unpack(ARGV, i + 1, i + 2 * nfields))
    end
    return i + 1 + 2 * nfields
  end
  if fresh then redis.call('SET', key, ARGV[i]) end
  return i + 1
end

local n_args = #ARGV
while i <= n_args do
  local sortable, stream_id = ARGV[i], ARGV[i + 1]
  local nops = tonumber(ARGV[i + 2])
  i = i + 3
  local fresh = sortable == '' or sortable > last
  local event_id = stream_id
  if sortable == '' then event_id = 'snapshot' end
  for _ = 1, nops do
    local kind, tbl, key = ARGV[i], tables[tonumber(ARGV[i + 1])], ARGV[i + 2]
    if kind == 'N' or kind == 'R' then
      local nidx = tonumber(ARGV[i + 3])
      local idx_first = i + 4
      i = idx_first + nidx
      if fresh and kind == 'R' then
        clean(tbl, key)
        redis.call('DEL', key)
      end
      i = write_row(tbl, key, i, fresh, event_id)
      if fresh then
        for k = idx_first, idx_first + nidx - 1 do
          local s = ARGV[k]
          local pending = adds[s]
          if not pending then
            pending = {}
            adds[s] = pending
          end
          pending[key] = true
          if not registered[s] then
            redis.call('SADD', tbl.idxsets, s)
            registered[s] = true
          end
        end
        if nidx == 1 then
          tbl.meta[key] = ARGV[idx_first]
        else
          tbl.meta[key] = table.concat(ARGV, '\n', idx_first, idx_first + nidx - 1)
        end
      end
    elseif kind == 'C' then
      local ttl = tonumber(ARGV[i + 3])
      i = i + 4
      if fresh then
        clean(tbl, key)
        redis.call('DEL', key)
      end
      i = write_row(tbl, key, i, fresh, event_id)
      if fresh then
        redis.call('EXPIRE', key, ttl)
        tbl.meta[key] = ''
      end
    elseif kind == 'D' then
      i = i + 3
      if fresh then
        clean(tbl, key)
        redis.call('DEL', key)
        tbl.meta[key] = false
      end
    elseif kind == 'T' then
      i = i + 2
      if fresh then
        flush_pending()
        local keys = redis.call('HKEYS', tbl.rowindex)
        for k = 1, #keys, 1000 do
          redis.call('DEL', unpack(keys, k, math.min(k + 999, #keys)))
        end
        for _, s in ipairs(redis.call('SMEMBERS', tbl.idxsets)) do redis.call('DEL', s) end
        redis.call('DEL', tbl.rowindex, tbl.idxsets)
        registered = {}
      end
    else
      return redis.error_reply('WALCAST_BUG unknown op ' .. tostring(kind))
    end
  end
  if fresh and sortable ~= '' then
    applied = applied + 1
  end
end
flush_pending()

-- Trimmed before this batch's XADDs, which follow in the transaction:
-- MAXLEN is approximate (~) anyway.
if ARGV[3] ~= '' and advances then
  redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[3])
end
if advances then
  redis.call('HSET', KEYS[1], 'last_id', newest, 'event_id', newest_id)
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
