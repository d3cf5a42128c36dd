-- wrk script for bench/receiver.py: walks a file of pre-signed webhook deliveries so that every
-- request carries a distinct event, and counts the answers that are 2xx with result "processed".
--
--   wrk -t1 -c32 -d10s -s bench/loadgen.lua http://127.0.0.1:PORT -- requests.tsv THREADS
--
-- Each line of the file is `<Stripe-Signature header>\t<JSON body>` (compact JSON has no raw tab
-- or newline). Thread k of n sends lines k, k+n, k+2n, ... so threads never send the same event.
-- Lines are read as they are sent (the file can be hundreds of MB); signing happened beforehand,
-- so the generator's only work is reading a line and framing it. When a thread runs out of lines
-- it stops and `exhausted` is reported: the rate is then a lower bound.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

-- Per-thread globals (read back with thread:get in done()).
processed = 0
other = 0
exhausted = 0
local file
local count = 1
local line_number = 0
local last_request

function init(args)
  file = assert(io.open(args[1], "r"))
  count = tonumber(args[2]) or 1
end

function request()
  local line
  repeat
    line = file:read("*l")
    if line == nil then
      exhausted = 1
      wrk.thread:stop()
      return last_request
    end
    line_number = line_number + 1
  until (line_number - 1) % count == index
  local tab = line:find("\t", 1, true)
  last_request = wrk.format("POST", "/webhooks/stripe", {
    ["Content-Type"] = "application/json",
    ["Stripe-Signature"] = line:sub(1, tab - 1),
  }, line:sub(tab + 1))
  return last_request
end

function response(status, headers, body)
  if status >= 200 and status < 300 and body:find('"result":"processed"', 1, true) then
    processed = processed + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local p, o, ex = 0, 0, 0
  for _, thread in ipairs(threads) do
    p = p + thread:get("processed")
    o = o + thread:get("other")
    ex = ex + thread:get("exhausted")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"processed":%d,"other":%d,"exhausted":%d,"requests":%d,"duration_us":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
      .. '"status_errors":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    p, o, ex, summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
    e.status, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.max))
end
