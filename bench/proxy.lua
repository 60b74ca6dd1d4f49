-- The proxy: GET of provider bench's API. Against the bare handler (TARGET=bare) the API
-- directly, the baseline; against oauthd the same call through /v1/proxy, which adds the
-- key check, the token and a second HTTP hop. SCENARIO=proxy+20ms: an API that takes
-- 20 ms to answer, as one across the internet does.
package.path = "bench/?.lua;" .. package.path
local common = require("common").install()

function init(args)
  ok = 0
  wrk.method = "GET"
  local api = "/api/me"
  if os.getenv("SCENARIO") == "proxy+20ms" then api = "/api/me-20ms" end
  if os.getenv("TARGET") == "bare" then
    wrk.path = api
  else
    wrk.path = "/v1/proxy/bench/default" .. api
    wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")
  end
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 end
end
