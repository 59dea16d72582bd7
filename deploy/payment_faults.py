#!/usr/bin/env python3
"""A fault run proving that money is never lost between the payment provider and Orderly's
ledger.

Two `orderly serve` instances share a private PostgreSQL primary and a private Redis and charge
through a fake payment provider run by this script. For `--duration` seconds, six clients
place orders, pay them (some retrying under the same Idempotency-Key, some giving up after the
first failure), race cancels against payments, refund and cancel, each request to a random
instance. Meanwhile, on a schedule: the provider fails every call, then charges and hangs
(and an instance is SIGKILLed while those charges hang, then restarted), then answers slowly;
Redis is killed and restarted; PostgreSQL is crash-restarted while charges are in flight.

Then, once every instance reports no unsettled payment attempt, it checks:

- for every order, the provider's net money (charges minus refunds) equals its ledger rows;
- the ledger's total equals the revenue `/stats` reports;
- an order has at most one succeeded payment;
- order status agrees with the money: `paid` holds its total (less what was refunded),
  `pending`, `cancelled` and `refunded` hold nothing;
- stock is conserved: initial stock less the quantities of orders not cancelled;
- the provider never refunded more than a charge, nor a charge it never made;
- a retried payment answers the payment already made; no answer was ever a 500.

Everything runs on 127.0.0.1 in a temporary folder and is torn down at the end, also on
failure or Ctrl-C. Exits non-zero on the first broken guarantee; prints figures. Needs
`redis-server`, `openssl` and PostgreSQL's server programs (found as deploy/pg_replica.sh
finds them), and a debug build (`cargo build`).

    python3 deploy/payment_faults.py --binary target/debug/orderly --duration 60
"""

import argparse
import collections
import glob
import http.client
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PG_SCRIPT = os.path.join(ROOT, "deploy", "pg_replica.sh")
ADMIN_EMAIL = "faults-admin@example.com"
ADMIN_PASSWORD = "faults-admin-password"
INSTANCES = 2
CLIENTS = 6
PRODUCTS = [(1000, 100000), (2500, 100000), (3900, 100000), (5000, 100000)]  # unit price, stock
# How long a retrying client keeps at it. A request that died with its instance holds its
# Idempotency-Key for the request timeout plus 5 s (15 s), so a retry must outlast that.
ORDER_RETRY_WINDOW = 30
PAYMENT_RETRY_WINDOW = 20
CLIENT_TIMEOUT = 12  # above the server's 10 s request timeout
TRANSIENT = {0, 502, 503, 504}  # no answer, or an instance, its database or the provider is down
IN_PROGRESS = {"idempotency_request_in_progress", "payment_in_progress"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "orderly"))
    parser.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    args = parser.parse_args()
    for tool in ["redis-server", "openssl"]:
        if shutil.which(tool) is None:
            sys.exit(f"faults: `{tool}` is required")
    if not postgres_programs_found():
        sys.exit("faults: PostgreSQL's server programs (initdb, pg_ctl) are required")
    # A plain `kill` of this script tears down like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    with World(args.binary) as world:
        load = Load(world, args.duration)
        load.run()
        world.heal()
        settled_in = wait_until_settled(world)
        figures(world, load, settled_in)
        check(world, load)
    print(f"faults: all checks passed ({time.monotonic() - started:.0f} s in all)")


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def postgres_programs_found():
    """Whether deploy/pg_replica.sh will find initdb and pg_ctl, where it looks for them."""
    if os.environ.get("PG_BINDIR"):
        return os.path.exists(os.path.join(os.environ["PG_BINDIR"], "initdb"))
    return bool(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or shutil.which("initdb") is not None


# --- HTTP ---------------------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body
        self.tries = 1  # how many times the request was sent under its key

    def excerpt(self):
        return f"{self.status} {self.body[:200].decode(errors='replace')}"

    def json(self):
        return json.loads(self.body)

    def code(self):
        """The problem's `code`, if the body is one."""
        try:
            return json.loads(self.body).get("code")
        except (ValueError, AttributeError):
            return None


def request(base, method, path, body=None, token=None, headers=None, timeout=CLIENT_TIMEOUT):
    """One HTTP request. No answer (refused, reset, timed out) is status 0, never an exception."""
    data = None
    all_headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    all_headers.update(headers or {})
    req = urllib.request.Request(base + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return Response(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        try:
            return Response(error.code, error.headers, error.read())
        except (OSError, http.client.HTTPException):
            return Response(error.code, error.headers, b"")
    except (OSError, http.client.HTTPException):
        return Response(0, {}, b"")


def form_login(base, email, password):
    data = urllib.parse.urlencode({"grant_type": "password", "username": email, "password": password}).encode()
    req = urllib.request.Request(base + "/api/v1/auth/token", data=data, method="POST")
    with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT) as response:
        return json.loads(response.read())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(what, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise CheckFailed(f"{what} within {timeout} s")


# --- the fake payment provider ------------------------------------------------------------


class FakeProvider:
    """The HTTP provider protocol (see crates/orderly/src/payments/provider.rs), deduplicating
    on `Idempotency-Key`: a key always gets its first outcome and never moves money twice.
    It records every charge and refund it made, and what a real provider would refuse.

    Modes: `ok`; `fail` (every call answers 500 and does nothing); `hang_after` (POSTs do the
    work, then answer only after 30 s, long after the caller gave up); `slow` (POSTs wait 1.5 s,
    past the caller's timeout, then do the work and answer)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.mode = "ok"
        self.charges = {}  # key → {id, amount, reference} or {code} for a decline
        self.refunds = {}  # key → {id, charge, amount}
        self.calls = collections.Counter()
        self.violations = []  # what a real provider would have refused
        self.waiting = 0  # POSTs sleeping in `slow` or `hang_after`
        self.closing = threading.Event()  # wakes sleeping handlers at teardown
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ProviderHandler)
        self.server.daemon_threads = True
        self.server.provider = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.closing.set()
        if self.thread.is_alive():  # shutdown() waits for a loop that must have started
            self.server.shutdown()
        self.server.server_close()

    def set_mode(self, mode):
        with self.lock:
            self.mode = mode

    def post(self, route, key, body):
        """Does what a POST asks under its key; returns (status, answer)."""
        with self.lock:
            self.calls[f"POST {route}"] += 1
            if not key:
                self.violations.append(f"POST {route} without an Idempotency-Key")
                return 400, {"code": "idempotency_key_required"}
            if route == "/charges":
                return self.charge(key, body)
            if route == "/refunds":
                return self.refund(key, body)
            return 404, {"code": "not_found"}

    def charge(self, key, body):
        if key not in self.charges:
            if body.get("payment_method") == "pm_card_declined":
                self.charges[key] = {"code": "card_declined"}
            else:
                made = {"id": f"ch_{uuid.uuid4().hex[:20]}", "amount": body["amount"], "reference": body["reference"]}
                self.charges[key] = made
        return charge_answer(self.charges[key], 201)

    def refund(self, key, body):
        if key not in self.refunds:
            charge = next((c for c in self.charges.values() if c.get("id") == body.get("charge")), None)
            if charge is None:
                self.violations.append(f"refund under {key} of a charge never made: {body.get('charge')!r}")
                return 404, {"code": "no_such_charge"}
            left = charge["amount"] - sum(r["amount"] for r in self.refunds.values() if r["charge"] == charge["id"])
            if not 0 < body["amount"] <= left:
                self.violations.append(f"refund under {key} of {body['amount']} from charge {charge['id']} with {left} left")
                return 400, {"code": "amount_too_large"}
            self.refunds[key] = {"id": f"re_{uuid.uuid4().hex[:20]}", "charge": charge["id"], "amount": body["amount"]}
        return 201, {"id": self.refunds[key]["id"]}

    def lookup(self, route, key):
        """What was done under a key, without doing anything; returns (status, answer)."""
        with self.lock:
            self.calls[f"GET {route}"] += 1
            if route == "/charges" and key in self.charges:
                return charge_answer(self.charges[key], 200)
            if route == "/refunds" and key in self.refunds:
                return 200, {"id": self.refunds[key]["id"]}
            return 404, {"code": "not_found"}

    def money_by_order(self):
        """Net money the provider moved for each order: its charges less their refunds."""
        with self.lock:
            made = [c for c in self.charges.values() if "id" in c]
            order_of = {c["id"]: c["reference"] for c in made}
            net = collections.Counter()
            for c in made:
                net[c["reference"]] += c["amount"]
            for r in self.refunds.values():
                net[order_of[r["charge"]]] -= r["amount"]
            return dict(net)

    def figures(self):
        with self.lock:
            made = sum(1 for c in self.charges.values() if "id" in c)
            return made, len(self.charges) - made, len(self.refunds), dict(self.calls)


def charge_answer(outcome, made_status):
    if "id" in outcome:
        return made_status, {"id": outcome["id"]}
    return 402, {"code": outcome["code"]}


class ProviderHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the gateway keeps connections open between calls

    def do_POST(self):
        provider = self.server.provider
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")  # read even when failing: the connection is reused
        route = urllib.parse.urlsplit(self.path).path
        with provider.lock:
            mode = provider.mode
        if mode == "fail":
            return self.answer(500, {"code": "provider_down"})
        if mode == "slow":
            self.wait(1.5)
        answer = provider.post(route, self.headers.get("Idempotency-Key"), body)
        if mode == "hang_after":
            self.wait(30)
        self.answer(*answer)

    def do_GET(self):
        provider = self.server.provider
        url = urllib.parse.urlsplit(self.path)
        with provider.lock:
            mode = provider.mode
        if mode == "fail":
            return self.answer(500, {"code": "provider_down"})
        key = urllib.parse.parse_qs(url.query).get("idempotency_key", [""])[0]
        self.answer(*provider.lookup(url.path, key))

    def wait(self, seconds):
        provider = self.server.provider
        with provider.lock:
            provider.waiting += 1
        provider.closing.wait(seconds)
        with provider.lock:
            provider.waiting -= 1

    def answer(self, status, payload):
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the caller gave up long ago (hang_after): that is the point

    def log_message(self, *args):
        pass


# --- the world ----------------------------------------------------------------------------


class World:
    """PostgreSQL, Redis, the fake provider and the instances, started and torn down together.
    Starting anything holds `lock` and is refused once teardown began, so a fault that restarts
    a service cannot leave it running after the run."""

    def __init__(self, binary):
        self.binary = binary
        self.workdir = tempfile.mkdtemp(prefix="orderly-faults-")
        os.chmod(self.workdir, 0o755)  # the PostgreSQL server user works inside
        self.pg_dir = os.path.join(self.workdir, "pg")
        self.provider = FakeProvider()
        self.instances = [[free_port(), None] for _ in range(INSTANCES)]  # [port, process]
        self.redis = None
        self.lock = threading.Lock()
        self.closed = False

    def __enter__(self):
        try:
            self.start()
        except BaseException as error:
            self.report(error)
            self.stop()
            if isinstance(error, CheckFailed):
                sys.exit(1)
            raise
        return self

    def __exit__(self, kind, value, trace):
        self.report(value)
        self.stop()
        if isinstance(value, CheckFailed):
            sys.exit(1)

    def report(self, error):
        if not isinstance(error, CheckFailed):
            return
        print(f"faults: FAILED: {error}", file=sys.stderr)
        for index in range(INSTANCES):
            if os.path.exists(self.log_path(index)):
                print(f"--- last lines of instance {index + 1}'s log ---", file=sys.stderr)
                with open(self.log_path(index), errors="replace") as log:
                    sys.stderr.writelines(log.readlines()[-15:])

    def start(self):
        self.provider.start()
        pg_port = free_port()
        started = run_tool(["bash", PG_SCRIPT, "start", self.pg_dir, str(pg_port)], "PostgreSQL starts")
        database = re.search(r"^primary=(\S+)$", started, re.M).group(1)
        self.redis_port = free_port()
        self.start_redis()
        key = run_tool(["openssl", "genpkey", "-algorithm", "ed25519"], "a signing key is generated")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERLY_")}
        self.env.update(
            ORDERLY_DATABASE_URL=database,
            ORDERLY_JWT_PRIVATE_KEY=key,
            ORDERLY_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}",
            ORDERLY_MIGRATE_ON_START="false",  # migrated once below, as in production
            ORDERLY_PAYMENT_PROVIDER_URL=self.provider.url,
            ORDERLY_PAYMENT_PROVIDER_TIMEOUT="1s",
            ORDERLY_PAYMENT_PROVIDER_DEADLINE="2s",
            ORDERLY_PAYMENT_PROVIDER_BACKOFF="50ms",
            ORDERLY_PAYMENT_CIRCUIT_OPEN="2s",
            # Past the deadline plus the provider's own time (`slow` lands a call 1.5 s after it
            # was sent): a lookup before a call lands would take a charge for one never made.
            ORDERLY_PAYMENT_SETTLE_AFTER="3s",
            ORDERLY_STATS_CACHE_TTL="0s",
            ORDERLY_LOG_FORMAT="json",
            ORDERLY_SHUTDOWN_GRACE="2s",
        )
        for tier in ["ANONYMOUS", "USER", "API_KEY", "CREDENTIALS", "ACCOUNT_LOGIN"]:
            self.env[f"ORDERLY_RATE_LIMIT_{tier}"] = "1000000/1s"  # faults, not quotas, are under test
        run_tool([self.binary, "migrate"], "migrations apply", env=self.env)
        run_tool(
            [self.binary, "admin", "create-user", "--email", ADMIN_EMAIL, "--role", "admin"],
            "the admin is created", env={**self.env, "ORDERLY_ADMIN_PASSWORD": ADMIN_PASSWORD},
        )
        for index in range(INSTANCES):
            self.start_instance(index)

    def stop(self):
        with self.lock:
            self.closed = True
        for _, process in self.instances:
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in self.instances:
            if process:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.provider.stop()
        if self.redis and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait()
        if os.path.exists(self.pg_dir):
            subprocess.run(["bash", PG_SCRIPT, "stop", self.pg_dir], capture_output=True)
        if not os.environ.get("ORDERLY_FAULTS_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_path(self, index):
        return os.path.join(self.workdir, f"instance-{index + 1}.log")

    def base(self, index):
        return f"http://127.0.0.1:{self.instances[index][0]}"

    def start_instance(self, index):
        port = self.instances[index][0]
        with self.lock:
            expect(not self.closed, "nothing starts once teardown began")
            with open(self.log_path(index), "a") as log:
                self.instances[index][1] = subprocess.Popen(
                    [self.binary, "serve"], env={**self.env, "ORDERLY_LISTEN": f"127.0.0.1:{port}"},
                    stdout=log, stderr=subprocess.STDOUT,
                )
        wait_until(f"instance {index + 1} is ready", lambda: request(self.base(index), "GET", "/readyz", timeout=2).status == 200)

    def kill_instance(self, index):
        process = self.instances[index][1]
        process.kill()  # SIGKILL: no draining, no cleanup
        process.wait()

    def instance_running(self, index):
        process = self.instances[index][1]
        return process is not None and process.poll() is None

    def start_redis(self):
        with self.lock:
            expect(not self.closed, "nothing starts once teardown began")
            self.redis = subprocess.Popen(
                ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
            )
        wait_until("redis-server listens", lambda: port_open(self.redis_port))

    def kill_redis(self):
        self.redis.kill()
        self.redis.wait()

    def crash_restart_postgres(self):
        # Under the lock: teardown must not remove the data directory mid-restart.
        with self.lock:
            expect(not self.closed, "nothing starts once teardown began")
            run_tool(["bash", PG_SCRIPT, "restart", self.pg_dir, "primary"], "PostgreSQL restarts")

    def heal(self):
        """Everything up and the provider healthy, as after every outage."""
        self.provider.set_mode("ok")
        if self.redis.poll() is not None:
            self.start_redis()
        for index in range(INSTANCES):
            if not self.instance_running(index):
                self.start_instance(index)

    def admin_token(self):
        return form_login(self.base(0), ADMIN_EMAIL, ADMIN_PASSWORD)["access_token"]

    def scrape(self, index):
        """`{series: value}` of one instance's /metrics; empty if it did not answer."""
        response = request(self.base(index), "GET", "/metrics", timeout=5)
        series = {}
        if response.status != 200:
            return series
        for line in response.body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                series[name] = float(value)
        return series


def run_tool(command, what, env=None):
    """Runs a command to completion; its stdout, or CheckFailed with its stderr."""
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{what}: `{' '.join(command[:3])}` did not finish within 120 s")
    expect(done.returncode == 0, f"{what}: `{' '.join(command[:3])}` exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


# --- the load -----------------------------------------------------------------------------


class Tally:
    """What the clients saw, shared by their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = collections.Counter()
        self.statuses = collections.Counter()
        self.server_errors = []  # "METHOD path: body" of every 500
        self.breaches = []  # broken guarantees seen by a client, in the order seen
        self.crashes = []  # tracebacks of threads that died
        self.refundable = []  # [payment id, amount not yet refunded] of payments a client saw made
        self.faults = []  # (seconds into the load, what)

    def count(self, event):
        with self.lock:
            self.events[event] += 1

    def breach(self, message):
        with self.lock:
            self.breaches.append(message)

    def saw(self, method, path, response):
        with self.lock:
            self.statuses[response.status] += 1
            if response.status == 500:
                self.server_errors.append(f"{method} {path}: {response.body[:300].decode(errors='replace')}")


class Load:
    """The clients and the fault schedule, run together for `duration` seconds."""

    def __init__(self, world, duration):
        self.world, self.duration = world, duration
        self.tally = Tally()
        self.admin = world.admin_token()
        self.customers = [self.new_customer() for _ in range(CLIENTS)]
        self.products = [self.new_product(price, stock) for price, stock in PRODUCTS]
        self.initial_stock = {product: stock for product, (_, stock) in zip(self.products, PRODUCTS)}

    def new_customer(self):
        email = f"customer-{uuid.uuid4().hex[:10]}@example.com"
        base = self.world.base(0)
        registered = request(base, "POST", "/api/v1/auth/register", {"email": email, "password": "customer-password", "name": "C"})
        expect(registered.status == 201, f"registration: {registered.excerpt()}")
        return form_login(base, email, "customer-password")["access_token"]

    def new_product(self, price, stock):
        created = request(
            self.world.base(0), "POST", "/api/v1/products",
            {"sku": f"PF-{uuid.uuid4().hex[:12]}", "name": "Fault product", "unit_price": price, "currency": "USD", "stock": stock},
            token=self.admin,
        )
        expect(created.status == 201, f"product creation: {created.excerpt()}")
        return created.json()["id"]

    def run(self):
        self.started = time.monotonic()
        self.ends = self.started + self.duration
        threads = [self.spawn(self.client, index) for index in range(CLIENTS)]
        threads.append(self.spawn(self.inject_faults))
        for thread in threads:
            thread.join()
        self.elapsed = time.monotonic() - self.started

    def spawn(self, target, *args):
        """A thread whose death is recorded, never silent."""
        def guarded():
            try:
                target(*args)
            except BaseException:
                with self.tally.lock:
                    self.tally.crashes.append(traceback.format_exc())
        thread = threading.Thread(target=guarded, daemon=True)
        thread.start()
        return thread

    # Requests.

    def send(self, method, path, body=None, token=None, key=None):
        """One request to a randomly chosen instance."""
        headers = {"Idempotency-Key": key} if key else None
        response = request(self.world.base(random.randrange(INSTANCES)), method, path, body, token, headers)
        self.tally.saw(method, path, response)
        return response

    def send_until_answered(self, method, path, body, token, key, window, retry_conflicts=True):
        """Sends, then retries the same request (same key) while the answer is transient, for
        up to `window` seconds. Returns the last answer."""
        deadline = time.monotonic() + window
        response, tries = self.send(method, path, body, token, key), 1
        while transient(response, retry_conflicts) and time.monotonic() < deadline:
            time.sleep(0.3)
            self.tally.count("retries")
            response, tries = self.send(method, path, body, token, key), tries + 1
        response.tries = tries
        return response

    # The flows.

    def client(self, index):
        persistent = index % 3 != 2  # two clients in six give up after the first failure
        flows = [self.order_and_pay, self.race_cancel_against_payment, self.refund, self.cancel_unpaid]
        while time.monotonic() < self.ends:
            random.choices(flows, weights=[45, 15, 25, 15])[0](persistent)

    def place_order(self, customer):
        lines = random.sample(self.products, random.randint(1, 2))
        body = {"items": [{"product_id": product, "quantity": random.randint(1, 3)} for product in lines]}
        response = self.send_until_answered("POST", "/api/v1/orders", body, customer, new_key(), ORDER_RETRY_WINDOW)
        if response.status == 201:
            self.tally.count("orders placed")
            return response.json()
        if transient(response):
            self.tally.count("orders left unanswered")
        else:
            self.tally.breach(f"placing an order answered {response.excerpt()}")
        return None

    def order_and_pay(self, persistent):
        customer = random.choice(self.customers)
        order = self.place_order(customer)
        if order is None:
            return
        method = "pm_card_declined" if random.random() < 0.15 else "pm_card_visa"
        paid = self.pay(order, customer, method, persistent)
        if paid.status == 402 and random.random() < 0.5:
            self.pay(order, customer, "pm_card_visa", persistent)  # another card after a decline

    def pay(self, order, customer, method, persistent):
        path = f"/api/v1/orders/{order['id']}/payments"
        body, key = {"payment_method": method}, new_key()
        window = PAYMENT_RETRY_WINDOW if persistent else 0
        response = self.send_until_answered("POST", path, body, customer, key, window)
        declined = method == "pm_card_declined"
        if response.status == 201:
            payment = response.json()
            self.check_payment(order, payment, declined)
            if persistent:
                self.check_replay(path, body, customer, key, payment["id"])
        elif response.status == 402 and declined:
            self.tally.count("payments declined")
        elif transient(response):
            self.tally.count("payments left to the reconciler")
        elif response.status == 409 and response.code() == "invalid_state":
            # Only this client pays this order: if it is paid, that is this key's charge, and a
            # retry must answer it.
            status = self.order_status(order["id"], customer)
            self.tally.breach(
                f"order {order['id']}: try {response.tries} of one payment under one key answered 409 invalid_state "
                f"and the order is {status}; a retry of a payment already made must answer that payment (201)"
            )
        else:
            self.tally.breach(f"order {order['id']}: paying with {method} answered {response.excerpt()}")
        return response

    def check_payment(self, order, payment, declined):
        if declined or payment["status"] != "succeeded" or payment["amount"] != order["total"]:
            self.tally.breach(
                f"order {order['id']} (total {order['total']}): a payment answered 201 with status "
                f"{payment['status']} and amount {payment['amount']}" + (" for a declined card" if declined else "")
            )
            return
        self.tally.count("payments succeeded")
        with self.tally.lock:
            self.tally.refundable.append([payment["id"], payment["amount"]])

    def check_replay(self, path, body, token, key, payment_id):
        """A retry of a payment already made answers that payment, every time."""
        again = self.send("POST", path, body, token, key)
        if transient(again):
            return  # a fault is active; the final checks judge the money
        if again.status != 201 or again.json().get("id") != payment_id:
            self.tally.breach(f"{path}: a retry of payment {payment_id} under its key answered {again.excerpt()}")
        else:
            self.tally.count("payment retries answered the same payment")

    def order_status(self, order_id, token):
        found = self.send_until_answered("GET", f"/api/v1/orders/{order_id}", None, token, None, 5)
        return found.json()["status"] if found.status == 200 else f"unreadable ({found.status})"

    def race_cancel_against_payment(self, persistent):
        """A payment, and 0.2 s later a cancel: one of them wins, never both."""
        customer = random.choice(self.customers)
        order = self.place_order(customer)
        if order is None:
            return
        paid = {}
        path = f"/api/v1/orders/{order['id']}/payments"
        payer = self.spawn(lambda: paid.update(response=self.send("POST", path, {"payment_method": "pm_card_visa"}, customer, new_key())))
        time.sleep(0.2)
        cancel = self.send_until_answered(
            "POST", f"/api/v1/orders/{order['id']}/cancel", {}, customer, None, PAYMENT_RETRY_WINDOW if persistent else 0,
            retry_conflicts=False,
        )
        payer.join()
        payment = paid.get("response")
        if payment is None:
            return  # the thread died; its traceback is recorded
        if payment.status == 201:
            self.check_payment(order, payment.json(), declined=False)
        if cancel.status == 200 and payment.status == 201:
            self.tally.breach(f"order {order['id']}: both the cancel (200) and the payment (201) went through")
        elif cancel.status == 200:
            self.tally.count("races won by the cancel")
        elif cancel.status == 409 and cancel.code() in ("payment_in_progress", "invalid_state"):
            self.tally.count("races won by the payment")
        elif transient(cancel):
            self.tally.count("races left undecided")
        else:
            self.tally.breach(f"order {order['id']}: a cancel racing a payment answered {cancel.excerpt()}")
        if payment.status not in (201, 409) and not transient(payment):
            self.tally.breach(f"order {order['id']}: a payment racing a cancel answered {payment.excerpt()}")

    def refund(self, persistent):
        with self.tally.lock:
            taken = self.tally.refundable.pop(random.randrange(len(self.tally.refundable))) if self.tally.refundable else None
        if taken is None:
            return self.order_and_pay(persistent)
        payment_id, left = taken
        amount = left if left == 1 or random.random() < 0.5 else random.randint(1, left - 1)
        body = {} if amount == left and random.random() < 0.5 else {"amount": amount}  # {}: all that is left
        path, key = f"/api/v1/payments/{payment_id}/refunds", new_key()
        response = self.send_until_answered("POST", path, body, self.admin, key, PAYMENT_RETRY_WINDOW if persistent else 0)
        if response.status == 201 and response.json()["amount"] == amount:
            self.tally.count("refunds")
            if left > amount:
                with self.tally.lock:
                    self.tally.refundable.append([payment_id, left - amount])
            if persistent:
                again = self.send("POST", path, body, self.admin, key)
                if not transient(again) and (again.status != 201 or again.json()["id"] != response.json()["id"]):
                    self.tally.breach(f"{path}: a retry of refund {response.json()['id']} answered {again.excerpt()}")
        elif transient(response):
            self.tally.count("refunds left to the reconciler")  # how much it refunds is unknown: not refunded again
        else:
            # Only this client refunds this payment now: what it shows refunded beyond what was
            # refunded before is this key's refund, which a retry must answer.
            found = self.send("GET", f"/api/v1/payments/{payment_id}", token=self.admin)
            shows = f"{found.json()['refunded_amount']} of {found.json()['amount']}" if found.status == 200 else "unknown"
            self.tally.breach(
                f"payment {payment_id}: try {response.tries} of refunding {amount} of the {left} left under one key "
                f"answered {response.excerpt()}; the payment now shows {shows} refunded"
            )

    def cancel_unpaid(self, persistent):
        customer = random.choice(self.customers)
        order = self.place_order(customer)
        if order is None:
            return
        response = self.send_until_answered(
            "POST", f"/api/v1/orders/{order['id']}/cancel", {}, customer, None, PAYMENT_RETRY_WINDOW if persistent else 0,
            retry_conflicts=False,
        )
        if response.status == 200 and response.json()["status"] == "cancelled":
            self.tally.count("cancels")
        elif transient(response):
            self.tally.count("cancels left unanswered")
        else:
            self.tally.breach(f"order {order['id']}: cancelling it unpaid answered {response.excerpt()}")

    # The faults.

    def inject_faults(self):
        for at, what, action in fault_plan(self.world, self.duration):
            time.sleep(max(0, self.started + at - time.monotonic()))
            detail = action()
            line = what + (f" ({detail})" if detail else "")
            self.tally.faults.append((time.monotonic() - self.started, line))
            print(f"faults: {time.monotonic() - self.started:5.1f} s  {line}", flush=True)


def fault_plan(world, duration):
    """(seconds into the load, what, action) for every fault, spread over the run so that the
    last one ends well before it: the final stretch runs healthy."""
    provider = world.provider
    span = max(2.0, min(4.0, duration * 0.07))  # how long a provider fault lasts

    def mode(name):
        return lambda: provider.set_mode(name)

    def kill_while_charges_hang():
        # The instance dies after the provider charged and before it recorded the charge.
        wait_for(lambda: provider.waiting >= 2, timeout=2)
        hanging = provider.waiting
        world.kill_instance(1)
        return f"{hanging} calls hanging at the provider"

    def crash_postgres_while_charging():
        wait_for(lambda: provider.waiting >= 1, timeout=2)
        in_flight = provider.waiting
        world.crash_restart_postgres()
        return f"{in_flight} provider calls in flight"

    def restart_instance():
        world.start_instance(1)
        return "ready"

    plan = [
        (0.08 * duration, "provider fails every call", mode("fail")),
        (0.08 * duration + span, "provider ok", mode("ok")),
        (0.22 * duration, "provider charges, then hangs", mode("hang_after")),
        (0.22 * duration + 0.5, "SIGKILL instance 2", kill_while_charges_hang),
        (0.22 * duration + span, "provider ok", mode("ok")),
        (0.22 * duration + span + 1, "instance 2 restarted", restart_instance),
        (0.42 * duration, "provider slow (1.5 s, past the 1 s timeout)", mode("slow")),
        (0.42 * duration + span, "provider ok", mode("ok")),
        (0.55 * duration, "Redis killed", world.kill_redis),
        (0.55 * duration + 2 * span, "Redis restarted", world.start_redis),
        (0.72 * duration, "provider slow, so charges are in flight", mode("slow")),
        (0.72 * duration + 0.5, "PostgreSQL crash-restarted", crash_postgres_while_charging),
        (0.72 * duration + span, "provider ok", mode("ok")),
    ]
    return sorted(plan, key=lambda step: step[0])


def wait_for(predicate, timeout):
    """Waits a while for a condition that makes a fault sharper; goes ahead without it."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)


def transient(response, retry_conflicts=True):
    """No answer, a service down, or (if `retry_conflicts`) the same request still in flight."""
    if response.status in TRANSIENT:
        return True
    return retry_conflicts and response.status == 409 and response.code() in IN_PROGRESS


def new_key():
    return str(uuid.uuid4())


# --- after the load -----------------------------------------------------------------------


def wait_until_settled(world, timeout=90):
    """Waits until every instance reports no unsettled payment attempt; returns how long."""
    started = time.monotonic()
    while True:
        unsettled = [unsettled_attempts(world.scrape(index)) for index in range(INSTANCES)]
        if all(count == 0 for count in unsettled):
            return time.monotonic() - started
        expect(time.monotonic() - started < timeout, f"payment attempts still unsettled after {timeout} s (per instance: {unsettled})")
        time.sleep(0.5)


def unsettled_attempts(series):
    """`orderly_payment_attempts_unsettled` summed over its kinds; None while absent."""
    values = [value for name, value in series.items() if name.startswith("orderly_payment_attempts_unsettled{")]
    return sum(values) if values else None


def admin_list(world, token, path):
    """Every item of an admin list, following `next_cursor`."""
    items, cursor = [], None
    while True:
        query = "?limit=100" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
        page = request(world.base(random.randrange(INSTANCES)), "GET", path + query, token=token)
        expect(page.status == 200, f"GET {path}: {page.excerpt()}")
        body = page.json()
        items += body["data"]
        cursor = body.get("next_cursor")
        if not cursor:
            return items


def figures(world, load, settled_in):
    tally = load.tally
    events = tally.events
    print(
        f"faults: {load.elapsed:.0f} s of load from {CLIENTS} clients on {INSTANCES} instances: "
        f"{events['orders placed']} orders placed, {events['payments succeeded']} payments, "
        f"{events['refunds']} refunds, {events['cancels']} cancels, {events['retries']} retries",
        flush=True,
    )
    print(f"faults: every client event: {', '.join(f'{name} {n}' for name, n in sorted(events.items()))}")
    print(f"faults: statuses seen: {', '.join(f'{s}×{n}' for s, n in sorted(tally.statuses.items()))}")
    print(f"faults: {len(tally.faults)} fault steps injected; no attempt unsettled {settled_in:.1f} s after the load")
    reconciled, oldest = collections.Counter(), []
    for index in range(INSTANCES):
        for name, value in world.scrape(index).items():
            labels = dict(re.findall(r'(\w+)="([^"]*)"', name))
            if name.startswith("orderly_payment_attempts_reconciled_total{"):
                reconciled[f"{labels.get('kind')}/{labels.get('outcome')}"] += value
            if name.startswith("orderly_payment_attempt_oldest_unsettled_seconds"):
                oldest.append(value)
    listed = ", ".join(f"{key} {value:.0f}" for key, value in sorted(reconciled.items())) or "none"
    ages = ", ".join(f"{age:.1f}" for age in oldest) or "absent"
    print(f"faults: reconciled (since each instance started): {listed}; oldest unsettled attempt: {ages} s per instance")
    made, declined, refunds, calls = world.provider.figures()
    print(f"faults: provider: {made} charges made, {declined} declines, {refunds} refunds; calls {dict(sorted(calls.items()))}", flush=True)


def check(world, load):
    """Every guarantee: nothing crashed or answered 500, the money at rest agrees, and every
    client got the answers it is owed."""
    tally = load.tally
    expect(not tally.crashes, f"{len(tally.crashes)} load threads died, the first:\n{''.join(tally.crashes[:1])}")
    expect(not tally.server_errors, f"{len(tally.server_errors)} answers were 500:{lines(tally.server_errors)}")
    expect(not world.provider.violations, f"the provider was asked for what no provider does:{lines(world.provider.violations)}")
    check_money(world, load)
    expect(not tally.breaches, f"{len(tally.breaches)} broken guarantees seen by the clients:{lines(tally.breaches)}")


def lines(items, limit=10):
    return "".join(f"\n  {item}" for item in items[:limit]) + (f"\n  … and {len(items) - limit} more" if len(items) > limit else "")


def check_money(world, load):
    admin = world.admin_token()
    orders = {order["id"]: order for order in admin_list(world, admin, "/api/v1/orders")}
    payments = admin_list(world, admin, "/api/v1/payments")
    ledger = admin_list(world, admin, "/api/v1/transactions")
    provider_net = world.provider.money_by_order()
    ledger_net = collections.Counter()
    for row in ledger:
        ledger_net[row["order_id"]] += row["amount"]
    for order_id in sorted(set(provider_net) | set(ledger_net) | set(orders)):
        expect(order_id in orders, f"order {order_id}: money moved for an order that does not exist")
        expect(
            provider_net.get(order_id, 0) == ledger_net.get(order_id, 0),
            f"order {order_id} ({orders[order_id]['status']}, total {orders[order_id]['total']}): the provider "
            f"holds {provider_net.get(order_id, 0)} for it, Orderly's ledger {ledger_net.get(order_id, 0)}",
        )
    stats = request(world.base(0), "GET", "/api/v1/stats", token=admin)
    expect(stats.status == 200, f"GET /stats: {stats.excerpt()}")
    revenue = stats.json().get("revenue", {}).get("USD", 0)
    expect(sum(ledger_net.values()) == revenue, f"the ledger sums to {sum(ledger_net.values())}, /stats says revenue {revenue}")
    check_orders_agree_with_money(orders, payments, provider_net)
    check_stock(world, load, orders)
    print(
        f"faults: money at rest agrees: {len(orders)} orders "
        f"({dict(collections.Counter(o['status'] for o in orders.values()))}), {len(payments)} payments, "
        f"{len(ledger)} ledger rows, revenue {revenue} USD = provider net {sum(provider_net.values())}",
        flush=True,
    )


def check_orders_agree_with_money(orders, payments, provider_net):
    succeeded = collections.defaultdict(list)  # order id → its succeeded payments
    holding = collections.defaultdict(list)  # order id → those still holding money
    for payment in payments:
        if payment["status"] == "succeeded":
            succeeded[payment["order_id"]].append(payment)
            if payment["refunded_amount"] < payment["amount"]:
                holding[payment["order_id"]].append(payment)
    for order_id, order in orders.items():
        net, held = provider_net.get(order_id, 0), holding[order_id]
        where = f"order {order_id} ({order['status']}, total {order['total']}, net {net})"
        charged = succeeded[order_id]
        expect(len(charged) <= 1, f"{where}: {len(charged)} succeeded payments: {[p['id'] for p in charged]}")
        if order["status"] == "paid":
            # A partial refund leaves the order paid, holding its total less the refund.
            expect(held, f"{where}: paid, but no payment holds money")
            refunded = held[0]["refunded_amount"]
            expect(
                held[0]["amount"] == order["total"] and net == order["total"] - refunded,
                f"{where}: paid, its payment of {held[0]['amount']} refunded {refunded}, yet the provider holds {net}",
            )
        else:
            expect(net == 0 and not held, f"{where}: holds money ({len(held)} payments)")


def check_stock(world, load, orders):
    ordered = collections.Counter()
    for order in orders.values():
        if order["status"] != "cancelled":
            for item in order["items"]:
                ordered[item["product_id"]] += item["quantity"]
    for product, initial in load.initial_stock.items():
        found = request(world.base(random.randrange(INSTANCES)), "GET", f"/api/v1/products/{product}")
        expect(found.status == 200, f"GET /products/{product}: {found.status}")
        stock = found.json()["stock"]
        expect(
            stock == initial - ordered[product],
            f"product {product}: stock {stock}, but {initial} initially less {ordered[product]} ordered in orders not cancelled is {initial - ordered[product]}",
        )


if __name__ == "__main__":
    main()
