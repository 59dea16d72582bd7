#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: a figure that does not move with the VM.

Throughput and CPU time on a shared VM drift by ±10 % between identical runs, more than most
changes to the code are worth. This runs `orderly serve` under `valgrind --tool=callgrind`,
seeds a small data set through the API, then for each scenario sends a fixed number of
requests one after another on one keep-alive connection with counting on, and prints the
server's user-space instructions per request. Identical binaries give identical counts to
within a fraction of a percent; the kernel's share (sockets, files) is not counted, nor is
what concurrency changes (group commits, batching), so this complements `run.py`, it does not
replace it.

    python3 bench/instructions.py                                  # SQLite
    python3 bench/instructions.py --postgres postgres://postgres@127.0.0.1:5432/postgres
    python3 bench/instructions.py --otlp        # with every span exported to a local OTLP sink

Needs valgrind (with callgrind_control) and what run.py needs. Uses the release binary in
$CARGO_TARGET_DIR (or target/), built by `run.py` or `cargo build --release -p orderly`.
"""

import argparse
import glob
import http.client
import json
import os
import random
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the benchmark's server, seeding and request helpers)

SCENARIOS = ["ceiling", "catalog_read", "order_list", "order_create", "payment"]
PRODUCTS, CUSTOMERS, ORDERS_PER_CUSTOMER = 100, 3, 40


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", metavar="URL", help="also count on PostgreSQL; a fresh database is created through this URL")
    parser.add_argument("--requests", type=int, default=400, help="requests per scenario (default 400)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of " + ", ".join(SCENARIOS))
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="extra server environment")
    parser.add_argument("--otlp", action="store_true", help="export every span to a local OTLP/HTTP sink (counted too)")
    args = parser.parse_args()
    scenarios = [name for name in args.scenarios.split(",") if name]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    binary = run.build(skip=True)
    extra_env = dict(pair.split("=", 1) for pair in args.server_env)
    if args.otlp:
        extra_env["ORDERLY_OTLP_ENDPOINT"] = otlp_sink()
    backends = [("sqlite", None)] + ([("postgres", args.postgres)] if args.postgres else [])
    print(f"{'backend':<9} {'scenario':<14} {'instructions/request':>22}")
    for backend, url in backends:
        outdir = run.tempfile.mkdtemp(prefix="orderly-callgrind-")
        wrapper = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={outdir}/callgrind.out.%p"]
        with run.Server(binary, backend, url, False, extra_env, wrapper=wrapper, start_timeout=300) as server:
            data = seed(server)
            for scenario in scenarios:
                count = measure(server, outdir, scenario, data, args.requests)
                print(f"{backend:<9} {scenario:<14} {count:>22,.0f}", flush=True)
                print("JSON " + json.dumps({"backend": backend, "scenario": scenario, "instructions_per_request": count}))


def otlp_sink():
    """An OTLP/HTTP receiver on a free local port that accepts every batch and keeps nothing."""
    import http.server
    import threading

    class Sink(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (the standard library's name)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def seed(server):
    """The benchmark's own seeding, smaller: valgrind runs the server some fifty times slower."""
    data_dir = run.seed(server, products=PRODUCTS, customers=CUSTOMERS, orders_per_customer=ORDERS_PER_CUSTOMER)

    def lines(name):
        with open(os.path.join(data_dir, name)) as values:
            return values.read().split()

    return {"products": lines("product_ids"), "customers": lines("customer_tokens")}


def requests_for(scenario, data, count, port):
    """`count` (method, path, body, headers) tuples; payment orders are placed first, uncounted."""
    rng = random.Random(11)
    customer = data["customers"][0]
    auth = {"Authorization": f"Bearer {customer}"}
    if scenario == "ceiling":
        return [("GET", "/healthz", None, {})] * count
    if scenario == "catalog_read":
        return [("GET", f"/api/v1/products/{rng.choice(data['products'])}", None, {}) for _ in range(count)]
    if scenario == "order_list":
        return [("GET", "/api/v1/orders?limit=20", None, auth)] * count
    if scenario == "order_create":
        return [("POST", "/api/v1/orders", {"items": [{"product_id": rng.choice(data["products"]), "quantity": 1}]},
                 {**auth, "Idempotency-Key": str(uuid.uuid4())}) for _ in range(count)]
    orders = []
    for _ in range(count):
        body = {"items": [{"product_id": rng.choice(data["products"]), "quantity": 1}]}
        status, _, payload = run.request(port, "POST", "/api/v1/orders", body, customer)
        assert status == 201, (status, payload)
        orders.append(json.loads(payload)["id"])
    return [("POST", f"/api/v1/orders/{order}/payments", {"payment_method": "pm_card_visa"},
             {**auth, "Idempotency-Key": str(uuid.uuid4())}) for order in orders]


def measure(server, outdir, scenario, data, count):
    planned = requests_for(scenario, data, count, server.port)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    send(connection, planned[:20])  # warm: caches filled, statements prepared, connection open
    callgrind(server, "-i", "on")
    send(connection, planned)
    callgrind(server, "-i", "off")
    before = set(glob.glob(f"{outdir}/callgrind.out.*"))
    callgrind(server, "-d")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dumps = set(glob.glob(f"{outdir}/callgrind.out.*")) - before
        total = next((instructions(path) for path in dumps if instructions(path)), None)
        if total:
            connection.close()
            return total / len(planned)
        time.sleep(0.2)
    sys.exit("callgrind wrote no dump")


def send(connection, planned):
    for method, path, body, headers in planned:
        payload = json.dumps(body).encode() if body is not None else None
        if payload is not None:
            headers = {**headers, "Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status < 400, (method, path, response.status)


def callgrind(server, *arguments):
    subprocess.run(["callgrind_control", *arguments, str(server.process.pid)], check=True, capture_output=True, timeout=60)


def instructions(path):
    """The dump's total (its `totals:` line, written last), or None while it is being written."""
    with open(path) as dump:
        for line in dump:
            if line.startswith("totals:"):
                return int(line.split()[1])
    return None


if __name__ == "__main__":
    main()
