-- GET /v1/connections/bench/default/token: the token API's hot path, on a connection whose
-- token is fresh (no refresh during the run). The bare handler answers the same path.
package.path = "bench/?.lua;" .. package.path
local common = require("common").install()

function init(args)
  ok = 0
  wrk.method = "GET"
  wrk.path = "/v1/connections/bench/default/token"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 end
end
