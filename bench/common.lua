-- Shared by the wrk scripts: per-thread ids and counting 2xx answers across threads.
local M = {}
local counter = 0
local threads = {}

function M.setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function M.done()
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("ok") end
  io.write(string.format("OK_RESPONSES %d\n", total))
end

-- Makes this module's setup and done the script's (wrk calls them by global name).
function M.install()
  setup = M.setup
  done = M.done
  return M
end

-- The states a create run saved for this thread (STATES_IN.<thread id>), or an empty list.
function M.load_states()
  local states = {}
  local f = io.open(os.getenv("STATES_IN") .. "." .. id, "r")
  if f then
    for line in f:lines() do table.insert(states, line) end
    f:close()
  end
  return states
end

M.headers = function()
  return {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("BENCH_API_KEY")}
end

M.create_body = '{"namespace":"oauth:bench","data":{"verifier":"abcdefghijklmnopqrstuvwxyz0123456789","return_to":"/done"}}'

return M
