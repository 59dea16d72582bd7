-- wrk script for every Orderly scenario. BENCH_SCENARIO picks the request mix; BENCH_DATA is
-- the folder the harness seeded (product ids, their current ETags, customer tokens).

local scenario = os.getenv("BENCH_SCENARIO")
local data = os.getenv("BENCH_DATA")

local function lines(path)
  local out = {}
  for line in io.lines(path) do
    out[#out + 1] = line
  end
  return out
end

local ids, etags, tokens
local sequence = 0
local key_prefix

function setup(thread)
  thread:set("seed", math.random(1, 2147483647))
end

function init(args)
  ids = lines(data .. "/product_ids")
  etags = lines(data .. "/product_etags")
  tokens = lines(data .. "/customer_tokens")
  math.randomseed(tonumber(seed) or os.time())
  key_prefix = "bench-" .. tostring(seed) .. "-" .. tostring(os.time()) .. "-"
end

local function catalog_read()
  return wrk.format("GET", "/api/v1/products/" .. ids[math.random(#ids)])
end

local function conditional_read()
  local i = math.random(#ids)
  return wrk.format("GET", "/api/v1/products/" .. ids[i], { ["If-None-Match"] = etags[i] })
end

local function order_list()
  return wrk.format("GET", "/api/v1/orders?limit=20", { ["Authorization"] = "Bearer " .. tokens[math.random(#tokens)] })
end

local function order_create()
  sequence = sequence + 1
  local body = '{"items":[{"product_id":"' .. ids[math.random(#ids)] .. '","quantity":1}]}'
  return wrk.format("POST", "/api/v1/orders", {
    ["Authorization"] = "Bearer " .. tokens[math.random(#tokens)],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = key_prefix .. sequence,
  }, body)
end

local function mixed()
  local roll = math.random(100)
  if roll <= 80 then
    return catalog_read()
  elseif roll <= 95 then
    return order_list()
  end
  return order_create()
end

local scenarios = {
  catalog_read = catalog_read,
  conditional_read = conditional_read,
  order_list = order_list,
  order_create = order_create,
  mixed = mixed,
}

if scenario == "ceiling" then
  -- A static request: wrk sends it without calling into Lua.
  wrk.path = "/healthz"
else
  request = scenarios[scenario]
  if request == nil then
    error("unknown BENCH_SCENARIO " .. tostring(scenario))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
