-- wrk script for `fraudctl bench`: every request scores one simulated transaction under an id never sent before
-- (a repeated id is a replay, which the feature state answers from memory), cycling through the bodies file so
-- users, merchants and amounts vary as the simulated traffic does. Each line of the file is a JSON body split
-- by a tab where its transaction_id goes. `done` prints the figures as one JSON line for the bench to parse.

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  for line in io.lines(args[1]) do
    local head, tail = line:match("^(.-)\t(.*)$")
    bodies[#bodies + 1] = { head, tail }
  end
  tag = args[2] .. "-" .. thread_id .. "-"
  sent = 0
  offset = (thread_id - 1) * 7919  -- threads start at different bodies
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  sent = sent + 1
  local body = bodies[((sent + offset) % #bodies) + 1]
  return wrk.format(nil, nil, nil, body[1] .. tag .. sent .. body[2])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
