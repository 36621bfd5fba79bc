-- wrk script of `just bench` (metrics-gate-bench drives it; see BENCHMARKS.md).
--
-- MG_MODE selects what each request carries:
--   static  the -H headers wrk was given (one warm token); wrk's own fast path, no Lua per request
--   tokens  a different valid token per request, read from the file MG_TOKENS (one per line),
--           round-robin from line MG_TOKENS_START (0-based)
--   bogus   a new made-up token per request: "bogus-<MG_PREFIX>-<n>"
-- MG_LIMIT: stop after that many responses. wrk itself still sleeps until -d is over, so the
-- script also creates the file MG_DONE_FILE, and the harness then ends wrk with SIGINT (wrk prints
-- its summary on SIGINT).
-- done() prints one line "MGJSON {...}" that the harness parses: exact percentiles in µs, counts.

local mode = os.getenv("MG_MODE") or "static"
local limit = tonumber(os.getenv("MG_LIMIT") or "0")
sent = 0

local function headers_with(token)
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h["Authorization"] = "Bearer " .. token
  return h
end

if mode == "tokens" then
  local tokens = {}
  for line in io.lines(os.getenv("MG_TOKENS")) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  local start = tonumber(os.getenv("MG_TOKENS_START") or "0")
  function request()
    local t = tokens[(start + sent) % #tokens + 1]
    sent = sent + 1
    return wrk.format(nil, nil, headers_with(t))
  end
elseif mode == "bogus" then
  local prefix = os.getenv("MG_PREFIX") or "x"
  function request()
    sent = sent + 1
    return wrk.format(nil, nil, headers_with("bogus-" .. prefix .. "-" .. sent))
  end
end

received = 0
if limit > 0 then
  local done_file = os.getenv("MG_DONE_FILE")
  function response(status, headers, body)
    received = received + 1
    if received == limit then
      if done_file then
        local f = io.open(done_file, "w")
        if f then f:close() end
      end
      wrk.thread:stop()
    end
  end
end

local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local total_sent = 0
  for _, t in ipairs(threads) do total_sent = total_sent + (t:get("sent") or 0) end
  local e = summary.errors
  io.write(string.format(
    'MGJSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"sent":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max, e.status, e.connect, e.read, e.write, e.timeout, total_sent))
end
