-- Create-then-consume pairs: each state a connection's create returns is consumed by the
-- thread's next request. A pair counts when the consume answers 200.
package.path = "bench/?.lua;" .. package.path
local common = require("common").install()

function init(args)
  ok = 0
  pending = {}
  headers = common.headers()
end

function request()
  local s = table.remove(pending)
  if s then
    return wrk.format("POST", "/v1/states/consume", headers,
      '{"namespace":"oauth:bench","state":"' .. s .. '"}')
  end
  return wrk.format("POST", "/v1/states", headers, common.create_body)
end

function response(status, headers, body)
  if status == 201 then
    local s = body:match('"state":"([^"]+)"')
    if s then table.insert(pending, s) end
  elseif status == 200 then
    ok = ok + 1
  end
end
