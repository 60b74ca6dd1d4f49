-- POST /v1/states/consume over the states a create run saved (STATES_IN.<thread id>).
-- Only 200 answers count; a thread that runs out of states sends unknown ones (404).
package.path = "bench/?.lua;" .. package.path
local common = require("common").install()

function init(args)
  ok = 0
  states = common.load_states()
  next_index = 1
  headers = common.headers()
end

function request()
  local s = states[next_index] or "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
  next_index = next_index + 1
  return wrk.format("POST", "/v1/states/consume", headers,
    '{"namespace":"oauth:bench","state":"' .. s .. '"}')
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 end
end
