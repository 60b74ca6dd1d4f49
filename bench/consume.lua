-- POST /v1/states/consume over the states a create run saved (STATES_IN.<thread id>).
-- Only 200 answers count; a thread that runs out of states sends unknown ones (404).
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  states = {}
  local f = io.open(os.getenv("STATES_IN") .. "." .. id, "r")
  if f then
    for line in f:lines() do table.insert(states, line) end
    f:close()
  end
  next_index = 1
  auth = "Bearer " .. os.getenv("OAUTHD_KEY")
end

function request()
  local s = states[next_index] or "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
  next_index = next_index + 1
  return wrk.format("POST", "/v1/states/consume",
    {["Content-Type"] = "application/json", ["Authorization"] = auth},
    '{"namespace":"oauth:bench","state":"' .. s .. '"}')
end

function response(status, headers, body)
  if status == 200 then ok = ok + 1 end
end

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("ok") end
  io.write(string.format("OK_RESPONSES %d\n", total))
end
