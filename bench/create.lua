-- POST /v1/states; with STATES_OUT set, each thread appends the states it got to
-- STATES_OUT.<thread id> for the consume run.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  local out = os.getenv("STATES_OUT")
  if out then file = io.open(out .. "." .. id, "w") end
  wrk.method = "POST"
  wrk.path = "/v1/states"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("OAUTHD_KEY")
  wrk.body = '{"namespace":"oauth:bench","data":{"verifier":"abcdefghijklmnopqrstuvwxyz0123456789","return_to":"/done"}}'
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

function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("ok") end
  io.write(string.format("OK_RESPONSES %d\n", total))
end
