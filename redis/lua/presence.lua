-- Shared prelude of the scripts that change a user's presence: reading the
-- user's hash and writing the presence JSON that the scripts publish and
-- return (the shape of the Rust `Presence`; built by hand because cjson would
-- print 16-digit numbers in floating point).
--
-- Hash fields: n:<node> count, d:<node> that node's share
-- ('active|idleSince|label:n,label:n'), seq, ls (lastSeen), or (offline
-- reason), st (the status the user set, JSON), se (its expiry, ms),
-- iv (invisible since, ms).

local function read_user(key)
  local fields = redis.call('HGETALL', key)
  local u = { counts = {}, shares = {}, total = 0 }
  for i = 1, #fields, 2 do
    local k, v = fields[i], fields[i + 1]
    local kind = string.sub(k, 1, 2)
    if kind == 'n:' then
      u.counts[string.sub(k, 3)] = tonumber(v)
      u.total = u.total + tonumber(v)
    elseif kind == 'd:' then
      u.shares[string.sub(k, 3)] = v
    else
      u[k] = v
    end
  end
  return u
end

-- Ends the presence JSON begun in `json` with the status the user set, if any.
local function presence_status(u, json)
  if u.st ~= nil and u.st ~= '' then
    local st = u.st
    if u.iv ~= nil and u.iv ~= '' then
      st = string.sub(st, 1, -2) .. ',"invisibleSince":' .. u.iv .. '}'
    end
    json = json .. ',"status":' .. st
  end
  return json .. '}'
end

-- The presence JSON of user `user` as read into `u` (after the script's changes).
local function presence_json(u, user)
  local json = '{"userId":' .. cjson.encode(user) .. ',"connections":' .. string.format('%d', u.total)
    .. ',"seq":' .. (u.seq or '0') .. ',"lastSeen":' .. ((u.ls == nil or u.ls == '') and 'null' or u.ls)
  if u.total == 0 then
    if u['or'] ~= nil and u['or'] ~= '' then
      json = json .. ',"reason":' .. cjson.encode(u['or'])
    end
  else
    -- The usual case, one node holding the user: its share is the sum, and
    -- its device list ('label:n,...', sorted) only needs quoting.
    local only, count, n_nodes = nil, 0, 0
    for node, n in pairs(u.counts) do
      only, count, n_nodes = node, n, n_nodes + 1
    end
    if n_nodes == 1 and u.shares[only] ~= nil then
      local a, i, d = string.match(u.shares[only], '^(%d+)|(%d*)|(.*)$')
      if a ~= nil and d ~= '' then
        json = json .. ',"devices":{"' .. string.gsub(string.gsub(d, ':', '":'), ',', ',"') .. '}'
        if a == '0' then
          json = json .. ',"idleSince":' .. (i == '' and '0' or i)
        end
        return presence_status(u, json)
      end
    end
    -- Devices and activity summed over nodes. A node without a share (one
    -- written before devices existed) counts as all active, device unknown.
    local devices, labels, active, idle = {}, {}, 0, 0
    local function add(label, n)
      if devices[label] == nil then
        devices[label] = 0
        labels[#labels + 1] = label
      end
      devices[label] = devices[label] + n
    end
    for node, n in pairs(u.counts) do
      local share = u.shares[node]
      local a, i, d = nil, nil, nil
      if share ~= nil then
        a, i, d = string.match(share, '^(%d+)|(%d*)|(.*)$')
      end
      if a == nil then
        active = active + n
        add('unknown', n)
      else
        active = active + tonumber(a)
        if i ~= '' and tonumber(i) > idle then
          idle = tonumber(i)
        end
        for label, c in string.gmatch(d, '([^:,]+):(%d+)') do
          add(label, tonumber(c))
        end
      end
    end
    table.sort(labels)
    local parts = {}
    for _, label in ipairs(labels) do
      parts[#parts + 1] = '"' .. label .. '":' .. string.format('%d', devices[label])
    end
    json = json .. ',"devices":{' .. table.concat(parts, ',') .. '}'
    if active == 0 then
      json = json .. ',"idleSince":' .. string.format('%.0f', idle)
    end
  end
  return presence_status(u, json)
end

-- seq = max(previous + 1, server clock in microseconds): it keeps growing
-- even when the record was lost (restart without persistence, expiry).
local function next_seq(u)
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local seq = tonumber(u.seq or '0') + 1
  if now_us > seq then
    seq = now_us
  end
  return string.format('%.0f', seq)
end
