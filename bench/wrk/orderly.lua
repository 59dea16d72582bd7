-- wrk script for every Orderly scenario. BENCH_SCENARIO picks the request mix; BENCH_DATA is
-- the folder the harness seeded (product ids, their current ETags, customer tokens and ids,
-- an admin token, and for `payment` the pending orders to pay).

local scenario = os.getenv("BENCH_SCENARIO")
local data = os.getenv("BENCH_DATA")

local function lines(path)
  local out = {}
  for line in io.lines(path) do
    out[#out + 1] = line
  end
  return out
end

local ids, etags, tokens, admin_token
local token_of_user = {}
local sequence = 0
local key_prefix
local threads_started = 0

function setup(thread)
  thread:set("seed", math.random(1, 2147483647))
  thread:set("index", threads_started)
  threads_started = threads_started + 1
end

-- `payment`: this thread's share of the prepared orders, as {token, order id}.
local payable = {}
local next_payable = 0
-- `payable_orders`: where this thread records the orders it created.
local created

function init(args)
  ids = lines(data .. "/product_ids")
  etags = lines(data .. "/product_etags")
  tokens = lines(data .. "/customer_tokens")
  admin_token = lines(data .. "/admin_token")[1]
  local user_ids = lines(data .. "/customer_ids")
  for i, user_id in ipairs(user_ids) do
    token_of_user[user_id] = tokens[i]
  end
  math.randomseed(tonumber(seed) or os.time())
  key_prefix = "bench-" .. tostring(seed) .. "-" .. tostring(os.time()) .. "-"
  if scenario == "payment" then
    local threads = tonumber(os.getenv("BENCH_THREADS"))
    for k, line in ipairs(lines(data .. "/payable_orders")) do
      if (k - 1) % threads == index then
        local user_id, order_id = line:match("^(%S+) (%S+)$")
        payable[#payable + 1] = { token_of_user[user_id], order_id }
      end
    end
  elseif scenario == "payable_orders" then
    created = io.open(data .. "/payable/" .. tostring(index), "w")
    -- Written line by line: thread states are not closed when wrk exits.
    created:setvbuf("line")
  end
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

local function payment()
  next_payable = next_payable % #payable + 1
  local order = payable[next_payable]
  return wrk.format("POST", "/api/v1/orders/" .. order[2] .. "/payments", {
    ["Authorization"] = "Bearer " .. order[1],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "pay-" .. order[2],
  }, '{"payment_method":"pm_card_visa"}')
end

local function stats()
  return wrk.format("GET", "/api/v1/stats", { ["Authorization"] = "Bearer " .. admin_token })
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
  payable_orders = order_create,
  payment = payment,
  stats = stats,
  mixed = mixed,
}

-- Records each created order as `user_id order_id` for the `payment` scenario. Responses
-- arrive interleaved across connections, so the owner is read from the body.
if scenario == "payable_orders" then
  function response(status, headers, body)
    if status == 201 then
      created:write(body:match('"user_id":"([^"]+)"'), " ", body:match('^{"id":"([^"]+)"'), "\n")
    end
  end
end

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
