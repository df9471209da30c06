-- wrk script: POST /api/v1/messages with a 1 KiB raw message and N recipients.
-- Usage: wrk -s inject.lua URL -- RCPTS [KEY]   (RCPTS default 1; KEY = bearer API key, optional)
-- Each request is the same body (no Idempotency-Key), so the server queues one message per request.

local rcpts = 1
local key = nil
local req = nil

local function message()
  local head = "From: sender@bench.test\r\nTo: rcpt@dest.test\r\nSubject: wrk benchmark\r\n" ..
               "Message-ID: <bench@bench.test>\r\nDate: Mon, 23 Nov 2026 16:00:00 +0000\r\n\r\n"
  local line = string.rep("x", 62) .. "\r\n"          -- 64 octets per body line
  local body = {}
  local size = #head
  while size + #line <= 1024 do
    table.insert(body, line)
    size = size + #line
  end
  return head .. table.concat(body)
end

local function json_string(s)
  return '"' .. s:gsub('\\', '\\\\'):gsub('"', '\\"'):gsub('\r', '\\r'):gsub('\n', '\\n') .. '"'
end

function init(args)
  rcpts = tonumber(args[1] or "1")
  key = args[2]
  local list = {}
  for i = 1, rcpts do
    list[i] = string.format('"r%d@dest%d.test"', i, i % 10)
  end
  local body = '{"envelope_sender":"bounces@bench.test","recipients":[' .. table.concat(list, ",") ..
               '],"content":' .. json_string(message()) .. '}'
  local headers = { ["Content-Type"] = "application/json" }
  if key then headers["Authorization"] = "Bearer " .. key end
  req = wrk.format("POST", "/api/v1/messages", headers, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  local ok = summary.requests - summary.errors.status - summary.errors.connect - summary.errors.read
             - summary.errors.write - summary.errors.timeout
  io.write(string.format(
    "RESULT requests=%d ok=%d non2xx=%d socket_errors=%d duration_s=%.3f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f\n",
    summary.requests, ok, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000))
end
