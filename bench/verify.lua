-- POST /v1/states/verify of states picked at random from the live ones a create run saved
-- (STATES_IN.<thread id>): the session / access-token hot path. Only 200 answers count.
package.path = "bench/?.lua;" .. package.path
local common = require("common").install()

function init(args)
  ok = 0
  states = common.load_states()
  if #states == 0 then table.insert(states, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA") end
  math.randomseed(id + 1)
  headers = common.headers()
end

function request()
  local s = states[math.random(#states)]
  return wrk.format("POST", "/v1/states/verify", headers,
    '{"namespace":"oauth:bench","state":"' .. s .. '"}')
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 end
end
