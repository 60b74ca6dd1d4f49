-- Mixed load for the soak test: states with a 2 s TTL in two namespaces; half are
-- consumed right away, a quarter consumed twice (404), the rest left to expire and be
-- swept; every 50th request is a wrong API key (401) and every 100th a bad body (400).
package.path = "bench/?.lua;" .. package.path
local common = require("common").install()

function init(args)
  ok = 0
  n = 0
  pending = {}
  headers = common.headers()
  bad_key = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer oauthd_wrong"}
end

local function create(ns)
  return wrk.format("POST", "/v1/states", headers,
    '{"namespace":"' .. ns .. '","ttl_seconds":2,"data":{"verifier":"abcdefghijklmnopqrstuvwxyz0123456789"}}')
end

function request()
  n = n + 1
  if n % 50 == 0 then
    return wrk.format("POST", "/v1/states", bad_key, '{"namespace":"oauth:soak"}')
  end
  if n % 100 == 1 then
    return wrk.format("POST", "/v1/states", headers, '{"namespace":')
  end
  local s = table.remove(pending)
  if s then
    return wrk.format("POST", "/v1/states/consume", headers,
      '{"namespace":"oauth:soak","state":"' .. s .. '"}')
  end
  if n % 2 == 0 then return create("2fa:soak") end
  return create("oauth:soak")
end

function response(status, headers, body)
  if status == 201 then
    local s = body:match('"state":"([^"]+)"')
    if s and body:find('"oauth:soak"', 1, true) then
      table.insert(pending, s)
      if n % 4 == 0 then table.insert(pending, s) end
    end
  elseif status == 200 then
    ok = ok + 1
  end
end
