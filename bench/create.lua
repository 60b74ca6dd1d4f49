-- POST /v1/states; with STATES_OUT set, each thread writes the states it got to
-- STATES_OUT.<thread id> for the consume (or verify) run.
package.path = "bench/?.lua;" .. package.path
local common = require("common").install()

function init(args)
  ok = 0
  local out = os.getenv("STATES_OUT")
  -- STATES_APPEND=1 adds to what an earlier run saved.
  if out then file = io.open(out .. "." .. id, os.getenv("STATES_APPEND") and "a" or "w") end
  wrk.method = "POST"
  wrk.path = "/v1/states"
  for k, v in pairs(common.headers()) do wrk.headers[k] = v end
  wrk.body = common.create_body
end

function response(status, headers, body)
  if status == 201 then
    ok = ok + 1
    if file then
      local s = body:match('"state":"([^"]+)"')
      if s then file:write(s, "\n") end
    end
  end
end
