#!/usr/bin/env python3
"""Orderly load benchmark.

Builds the release binary, starts `orderly serve` on a fresh database, seeds it through the
API, drives each scenario with wrk and prints one row per scenario (and JSON lines):
requests/s, latency percentiles, bad responses, server CPU per request and peak RSS.

    python3 bench/run.py                       # SQLite
    python3 bench/run.py --postgres URL        # SQLite, then PostgreSQL (URL may create databases)
    python3 bench/run.py --pin                 # server on CPU 0, wrk on CPU 1

Needs: cargo, wrk, and for PostgreSQL psql and openssl. Uses only the Python standard library.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = ["ceiling", "catalog_read", "conditional_read", "order_list", "order_create", "pg_floor", "payment", "stats", "mixed"]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PRODUCTS = 2000
CUSTOMERS = 20
ORDERS_PER_CUSTOMER = 100
ADMIN_EMAIL = "bench-admin@example.com"
ADMIN_PASSWORD = "bench-admin-password"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", metavar="URL", help="also run on PostgreSQL; a fresh database is created through this URL")
    parser.add_argument("--pin", action="store_true", help="pin the server to CPU 0 and wrk to CPU 1 (taskset)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per scenario (default 15)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of " + ", ".join(SCENARIOS))
    parser.add_argument("--skip-build", action="store_true", help="use the release binary as it is")
    parser.add_argument("--json", metavar="FILE", help="also append the JSON lines to FILE")
    parser.add_argument("--server-env", metavar="KEY=VALUE", action="append", default=[], help="extra environment for the server, e.g. ORDERLY_DATABASE_MAX_CONNECTIONS=4 (repeatable)")
    parser.add_argument("--profile", metavar="DIR", help="record the server with `perf record -e cpu-clock` during each scenario into DIR")
    args = parser.parse_args()

    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario(s): {', '.join(unknown)}")
    for tool in ["wrk"] + (["taskset"] if args.pin else []) + (["psql", "openssl"] if args.postgres else []):
        if shutil.which(tool) is None:
            sys.exit(f"`{tool}` is required (on Debian: apt-get install {'util-linux' if tool == 'taskset' else 'postgresql-client' if tool == 'psql' else tool})")

    binary = build(args.skip_build)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# orderly {commit}, {os.cpu_count()} CPUs, {args.connections} connections, {args.duration} s per scenario, pinned: {args.pin}")
    backends = ["sqlite"] + (["postgres"] if args.postgres else [])
    for backend in backends:
        with Server(binary, backend, args.postgres, args.pin, dict(item.split("=", 1) for item in args.server_env)) as server:
            started = time.monotonic()
            data_dir = seed(server)
            print(f"# {backend}: seeded {PRODUCTS} products, {CUSTOMERS} customers x {ORDERS_PER_CUSTOMER} orders in {time.monotonic() - started:.1f} s")
            print(f"{'backend':9} {'scenario':17} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'bad':>6} {'cpu µs/req':>11} {'peak RSS MiB':>13}")
            for scenario in scenarios:
                if scenario == "pg_floor" and backend != "postgres":
                    continue
                result = run_pg_floor(server, args) if scenario == "pg_floor" else run_scenario(server, data_dir, scenario, args)
                result.update(backend=backend, commit=commit, pinned=args.pin)
                print(
                    f"{backend:9} {scenario:17} {result['rps']:>9.0f} {result['p50_ms']:>8.2f} {result['p99_ms']:>8.2f} "
                    f"{result['p999_ms']:>9.2f} {result['bad']:>6} {result['cpu_us_per_request']:>11.1f} {result['peak_rss_mib']:>13.1f}",
                    flush=True,
                )
                line = json.dumps(result, sort_keys=True)
                print("JSON " + line, file=sys.stderr)
                if args.json:
                    with open(args.json, "a") as out:
                        out.write(line + "\n")


def build(skip):
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "orderly")
    if not skip:
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "orderly"], cwd=ROOT, check=True)
    if not os.path.exists(binary):
        sys.exit(f"no release binary at {binary}")
    return binary


class Server:
    """`orderly serve` on a fresh database, stopped (and the database dropped) on exit."""

    def __init__(self, binary, backend, postgres_url, pin, extra_env, wrapper=(), start_timeout=30):
        self.binary, self.backend, self.postgres_url, self.pin = binary, backend, postgres_url, pin
        self.extra_env = extra_env
        # A command the server runs under (a profiler), and how long it may take to be ready.
        self.wrapper, self.start_timeout = list(wrapper), start_timeout
        self.workdir = tempfile.mkdtemp(prefix=f"orderly-bench-{backend}-")
        self.database = None
        self.process = None

    def __enter__(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERLY_")}
        env.update(
            ORDERLY_DATA_DIR=self.workdir,
            ORDERLY_LOG_FORMAT="json",
            ORDERLY_ACCESS_TOKEN_TTL="6h",
            ORDERLY_SHUTDOWN_GRACE="5s",
            # One load generator on one address: quotas out of reach, still checked per request.
            ORDERLY_RATE_LIMIT_ANONYMOUS="1000000/1s",
            ORDERLY_RATE_LIMIT_USER="1000000/1s",
            ORDERLY_RATE_LIMIT_API_KEY="1000000/1s",
            ORDERLY_RATE_LIMIT_CREDENTIALS="1000000/1s",
            ORDERLY_RATE_LIMIT_ACCOUNT_LOGIN="1000000/1s",
        )
        if self.backend == "sqlite":
            env["ORDERLY_DATABASE_URL"] = f"sqlite://{self.workdir}/orderly.db"
        else:
            self.database = f"orderly_bench_{uuid.uuid4().hex[:12]}"
            subprocess.run(["psql", self.postgres_url, "-q", "-c", f"CREATE DATABASE {self.database}"], check=True)
            env["ORDERLY_DATABASE_URL"] = with_database(self.postgres_url, self.database)
            key = subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True, text=True, check=True).stdout
            env["ORDERLY_JWT_PRIVATE_KEY"] = key
        env.update(self.extra_env)
        self.port = free_port()
        env["ORDERLY_LISTEN"] = f"127.0.0.1:{self.port}"
        admin = subprocess.run(
            [self.binary, "admin", "create-user", "--email", ADMIN_EMAIL, "--role", "admin"],
            env={**env, "ORDERLY_ADMIN_PASSWORD": ADMIN_PASSWORD}, capture_output=True, text=True, timeout=60,
        )
        if admin.returncode != 0:
            sys.exit(f"creating the admin failed: {admin.stderr.strip()}")
        command = (["taskset", "-c", "0"] if self.pin else []) + self.wrapper + [self.binary, "serve"]
        self.log = open(os.path.join(self.workdir, "serve.log"), "w")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            try:
                if request(self.port, "GET", "/readyz")[0] == 200:
                    return self
            except OSError:
                pass
            if self.process.poll() is not None:
                sys.exit(f"orderly exited at start; see {self.log.name}")
            time.sleep(0.1)
        sys.exit(f"orderly did not become ready within {self.start_timeout} s")

    def __exit__(self, *exc):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        if self.database:
            subprocess.run(["psql", self.postgres_url, "-q", "-c", f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)"], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def cpu_ticks(self):
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def reset_peak_rss(self):
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as refs:
            refs.write("5")

    def peak_rss_kib(self):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0


def seed(server, products=PRODUCTS, customers=CUSTOMERS, orders_per_customer=ORDERS_PER_CUSTOMER):
    """Seeds through the API; returns the folder of data files the wrk script reads."""
    port = server.port
    admin_token = token(port, ADMIN_EMAIL, ADMIN_PASSWORD)

    def create_product(i):
        body = {"sku": f"BENCH-{i:05d}", "name": f"Bench product {i}", "description": "Seeded for the benchmark.",
                "unit_price": 100 + (i * 37) % 10000, "currency": "USD", "stock": 1_000_000}
        status, _, payload = request(port, "POST", "/api/v1/products", body, admin_token)
        assert status == 201, (status, payload)
        return json.loads(payload)["id"]

    def create_customer(i):
        email, password = f"bench-customer-{i}@example.com", "bench-customer-password"
        status, _, payload = request(port, "POST", "/api/v1/auth/register", {"email": email, "password": password, "name": f"Customer {i}"})
        assert status == 201, (status, payload)
        return token(port, email, password), json.loads(payload)["id"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        product_ids = list(pool.map(create_product, range(products)))
        tokens, user_ids = zip(*pool.map(create_customer, range(customers)))

        def create_orders(customer_token):
            rng = random.Random(customer_token)
            for _ in range(orders_per_customer):
                lines = rng.sample(product_ids, rng.randint(1, 3))
                body = {"items": [{"product_id": p, "quantity": rng.randint(1, 3)} for p in lines]}
                status, _, payload = request(port, "POST", "/api/v1/orders", body, customer_token)
                assert status == 201, (status, payload)

        list(pool.map(create_orders, tokens))

        def current_etag(product_id):
            status, headers, _ = request(port, "GET", f"/api/v1/products/{product_id}")
            assert status == 200
            return headers["etag"]

        etags = list(pool.map(current_etag, product_ids))

    data_dir = os.path.join(server.workdir, "wrk-data")
    os.makedirs(data_dir)
    files = [("product_ids", product_ids), ("product_etags", etags), ("customer_tokens", tokens),
             ("customer_ids", user_ids), ("admin_token", [admin_token])]
    for name, values in files:
        with open(os.path.join(data_dir, name), "w") as out:
            out.write("\n".join(values) + "\n")
    return data_dir


def wrk_command(server, args):
    script = os.path.join(ROOT, "bench", "wrk", "orderly.lua")
    return (["taskset", "-c", "1"] if args.pin else []) + [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "5s",
        "-s", script, f"http://127.0.0.1:{server.port}",
    ]


def prepare_payable_orders(server, data_dir, args):
    """Creates pending orders to pay, as `order_create` does, for as long as a scenario runs
    (unmeasured): paying is no faster than ordering, so there are enough. Each wrk thread
    writes `user_id order_id` lines; they are joined into `payable_orders`."""
    folder = os.path.join(data_dir, "payable")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    env = {**os.environ, "BENCH_SCENARIO": "payable_orders", "BENCH_DATA": data_dir}
    completed = subprocess.run(wrk_command(server, args), env=env, capture_output=True, text=True, timeout=args.duration + 60)
    if completed.returncode != 0:
        sys.exit(f"wrk failed preparing orders to pay:\n{completed.stdout}\n{completed.stderr}")
    orders = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as part:
            orders.extend(line for line in part.read().splitlines() if line)
    with open(os.path.join(data_dir, "payable_orders"), "w") as out:
        out.write("\n".join(orders) + "\n")
    return len(orders)


def run_scenario(server, data_dir, scenario, args):
    payable = prepare_payable_orders(server, data_dir, args) if scenario == "payment" else None
    command = wrk_command(server, args)
    env = {**os.environ, "BENCH_SCENARIO": scenario, "BENCH_DATA": data_dir, "BENCH_THREADS": str(args.threads)}
    server.reset_peak_rss()
    profiler = None
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        output = os.path.join(args.profile, f"{server.backend}-{scenario}.perf.data")
        profiler = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-p", str(server.process.pid), "-o", output],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ticks_before = server.cpu_ticks()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.duration + 60)
    ticks_after = server.cpu_ticks()
    if profiler:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(timeout=60)
    summary = next((line[len("BENCH "):] for line in completed.stdout.splitlines() if line.startswith("BENCH ")), None)
    if completed.returncode != 0 or summary is None:
        sys.exit(f"wrk failed for {scenario}:\n{completed.stdout}\n{completed.stderr}")
    stats = json.loads(summary)
    requests_done = max(stats["requests"], 1)
    if payable is not None and stats["requests"] > payable:
        print(f"# payment: {stats['requests']} requests for {payable} prepared orders; the rest paid orders again (409, counted as bad)")
    return {
        "scenario": scenario,
        "requests": stats["requests"],
        "rps": stats["requests"] / (stats["duration_us"] / 1e6),
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "p999_ms": stats["p999_us"] / 1000,
        "bad": stats["status_errors"] + stats["socket_errors"],
        "cpu_us_per_request": (ticks_after - ticks_before) / CLOCK_TICKS * 1e6 / requests_done,
        "peak_rss_mib": server.peak_rss_kib() / 1024,
        "connections": args.connections,
        "duration_s": args.duration,
    }


# The statements one keyed order placement runs (`orders::service::place_order` through
# `idempotency::keyed_transaction`), with the same shapes and sizes: claim the key, take one
# product's stock, insert the order, keep the sealed response, commit.
PG_FLOOR_SCRIPT = r"""
\set p random(1, {products})
\set c random(1, {customers})
\set k random(1, 9000000000000000000)
BEGIN;
INSERT INTO idempotency_keys (id, fingerprint, response, locked_until, expires_at, created_at)
  VALUES ('floor-' || :k, md5('f' || :k), NULL, now() + interval '6 s', now() + interval '1 day', now())
  ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, response = excluded.response,
    locked_until = excluded.locked_until, expires_at = excluded.expires_at, created_at = excluded.created_at
  WHERE idempotency_keys.expires_at <= now() OR (idempotency_keys.response IS NULL AND idempotency_keys.locked_until <= now());
UPDATE products SET stock = stock - 1, version = version + 1, updated_at = now()
  WHERE id = (SELECT id FROM bench_floor_products WHERE n = :p) AND active AND stock >= 1
  RETURNING id, sku, name, description, unit_price, currency, stock, active, version, created_at, updated_at;
INSERT INTO orders (id, user_id, status, currency, total, version, created_at, updated_at, items, idempotency_claim)
  VALUES ((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0') || substr(md5(random()::text), 1, 20))::uuid,
    (SELECT id FROM bench_floor_users WHERE n = :c), 'pending', 'USD', 1000, 1, now(), now(),
    '[{{"product_id":"01a229f0-6625-77df-82a5-6e4ac8728d9c","sku":"BENCH-00001","name":"Bench product 1","unit_price":1000,"quantity":1,"line_total":1000}}]',
    'floor-' || :k);
UPDATE idempotency_keys SET response = decode(repeat('ab', 420), 'hex'), expires_at = now() + interval '1 day' WHERE id = 'floor-' || :k;
END;
"""


def run_pg_floor(server, args):
    """`pg_floor`: pgbench running the statements of one keyed order placement in one
    transaction, with the same connections: the most order placements PostgreSQL itself allows
    on this machine, whatever the server in front of it does."""
    url = with_database(server.postgres_url, server.database)
    setup = (
        "DROP TABLE IF EXISTS bench_floor_products, bench_floor_users;"
        "CREATE TABLE bench_floor_products AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM products;"
        "CREATE TABLE bench_floor_users AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM users WHERE role = 'customer';"
        "ALTER TABLE bench_floor_products ADD PRIMARY KEY (n); ALTER TABLE bench_floor_users ADD PRIMARY KEY (n); ANALYZE;"
    )
    subprocess.run(["psql", url, "-q", "-c", setup], check=True, capture_output=True)
    script = os.path.join(server.workdir, "pg_floor.sql")
    with open(script, "w") as out:
        out.write(PG_FLOOR_SCRIPT.format(products=PRODUCTS, customers=CUSTOMERS))
    command = (["taskset", "-c", "1"] if args.pin else []) + [
        "pgbench", "-n", "-M", "prepared", "-c", str(args.connections), "-j", str(args.threads), "-T", str(args.duration),
        "-f", script, url,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60)
    if completed.returncode != 0:
        sys.exit(f"pgbench failed:\n{completed.stdout}\n{completed.stderr}")
    def figure(prefix):
        line = next(line for line in completed.stdout.splitlines() if line.startswith(prefix))
        return float(line[len(prefix):].lstrip(" =:").split()[0].split("/")[0])
    transactions = int(figure("number of transactions actually processed"))
    failed = int(figure("number of failed transactions")) if "number of failed transactions" in completed.stdout else 0
    return {
        "scenario": "pg_floor",
        "requests": transactions,
        "rps": figure("tps"),
        # pgbench reports the mean latency only; it stands in every percentile column.
        "p50_ms": figure("latency average"),
        "p99_ms": float("nan"),
        "p999_ms": float("nan"),
        "bad": failed,
        "cpu_us_per_request": 0.0,
        "peak_rss_mib": 0.0,
        "connections": args.connections,
        "duration_s": args.duration,
    }


def token(port, email, password):
    body = f"grant_type=password&username={email}&password={password}"
    status, _, payload = request(port, "POST", "/api/v1/auth/token", body.encode(), content_type="application/x-www-form-urlencoded")
    assert status == 200, (status, payload)
    return json.loads(payload)["access_token"]


def request(port, method, path, body=None, bearer=None, content_type="application/json"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {}
    if body is not None:
        headers["Content-Type"] = content_type
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def with_database(url, database):
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{database}" + (f"?{query}" if query else "")


if __name__ == "__main__":
    main()
