-- POST /v1/states; with STATES_OUT set, each thread appends the states it got to
-- STATES_OUT.<thread id> for the consume run.
package.path = "bench/?.lua;" .. package.path
local common = require("common").install()

function init(args)
  ok = 0
  local out = os.getenv("STATES_OUT")
  if out then file = io.open(out .. "." .. id, "w") end
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
