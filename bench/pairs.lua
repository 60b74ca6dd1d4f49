-- Create-then-consume pairs: each state a connection's create returns is consumed by the
-- thread's next request. A pair counts when the consume answers 200.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  pending = {}
  auth = "Bearer " .. os.getenv("OAUTHD_KEY")
  create_body = '{"namespace":"oauth:bench","data":{"verifier":"abcdefghijklmnopqrstuvwxyz0123456789","return_to":"/done"}}'
end

function request()
  local s = table.remove(pending)
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = auth}
  if s then
    return wrk.format("POST", "/v1/states/consume", headers,
      '{"namespace":"oauth:bench","state":"' .. s .. '"}')
  end
  return wrk.format("POST", "/v1/states", headers, create_body)
end

function response(status, headers, body)
  if status == 201 then
    local s = body:match('"state":"([^"]+)"')
    if s then table.insert(pending, s) end
  elseif status == 200 then
    ok = ok + 1
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("ok") end
  io.write(string.format("OK_RESPONSES %d\n", total))
end
