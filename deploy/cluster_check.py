#!/usr/bin/env python3
"""Three `orderly serve` instances on PostgreSQL + Redis behind nginx (deploy/nginx.conf), and
an `orderly worker` on RabbitMQ doing the background work (the topology of docker-compose.yml,
with processes), checked through the load balancer:

- a rate limit of N per minute admits N in total, not 3N, and again after Redis restarts;
- an Idempotency-Key replays whichever instance the retry reaches;
- a token issued by one instance works on every instance;
- a product update is never served stale by any instance once it has returned;
- with Redis killed, requests still succeed (no 5xx) and readiness holds;
- killing an instance with SIGKILL under write traffic loses no acknowledged write and
  duplicates none, and the instance serves again once restarted;
- the worker publishes every event the instances wrote to RabbitMQ (the outbox drains).

Everything runs on 127.0.0.1 in a temporary folder (a private Redis, a fresh database) and is
torn down at the end. Exits non-zero on the first broken guarantee.

    python3 deploy/cluster_check.py --binary target/debug/orderly \\
        --postgres postgres://postgres@127.0.0.1:5432/postgres \\
        --amqp amqp://guest:guest@127.0.0.1:5672/%2f
"""

import argparse
import concurrent.futures
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
import urllib.error
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUOTA = 30  # anonymous requests per minute per client
ADMIN_EMAIL = "cluster-admin@example.com"
ADMIN_PASSWORD = "cluster-admin-password"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "debug", "orderly"))
    parser.add_argument("--postgres", default=os.environ.get("ORDERLY_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--amqp", default=os.environ.get("ORDERLY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    args = parser.parse_args()
    for tool in ["nginx", "redis-server", "openssl", "psql"]:
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"cluster: `{tool}` is required")
    with Cluster(args.binary, args.postgres, args.amqp) as cluster:
        checks = [
            tokens_work_on_every_instance,
            idempotency_keys_replay_on_any_instance,
            updates_are_never_served_stale,
            rate_limits_are_global,
            redis_outage_degrades_without_errors,
            sigkill_loses_no_acknowledged_write,
            the_worker_publishes_every_event,
        ]
        for check in checks:
            started = time.monotonic()
            check(cluster)
            print(f"cluster: ok  {check.__name__.replace('_', ' ')} ({time.monotonic() - started:.1f} s)", flush=True)
    print("cluster: all checks passed")


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


# --- HTTP ---------------------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def request(base, method, path, body=None, token=None, headers=None, client=None, timeout=10):
    """One HTTP request; `client` is the address the caller claims through X-Forwarded-For
    (believed because every hop is a trusted proxy). Connection failures are status 0."""
    data = None
    all_headers = {"X-Forwarded-For": client or random_client()}
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
        return Response(error.code, error.headers, error.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
        return Response(0, {}, b"")


def random_client():
    return f"198.18.{random.randint(0, 255)}.{random.randint(1, 254)}"


def form_login(base, email, password):
    data = urllib.parse.urlencode({"grant_type": "password", "username": email, "password": password}).encode()
    req = urllib.request.Request(base + "/api/v1/auth/token", data=data, method="POST", headers={"X-Forwarded-For": random_client()})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


# --- the cluster --------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise CheckFailed(f"{what} within {timeout} s")


class Cluster:
    def __init__(self, binary, postgres, amqp):
        self.binary, self.postgres, self.amqp = binary, postgres, amqp
        self.worker = None
        self.workdir = tempfile.mkdtemp(prefix="orderly-cluster-")
        os.chmod(self.workdir, 0o755)
        self.database = f"orderly_cluster_{uuid.uuid4().hex[:12]}"
        self.instances = []  # [port, process]
        self.redis = None
        self.nginx = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind, value, trace):
        if isinstance(value, CheckFailed):
            print(f"cluster: FAILED: {value}", file=sys.stderr)
            for index in range(len(self.instances)):
                print(f"--- last lines of instance {index + 1}'s log ---", file=sys.stderr)
                with open(self.log_path(index), errors="replace") as log:
                    sys.stderr.writelines(log.readlines()[-15:])
        self.stop()
        if isinstance(value, CheckFailed):
            sys.exit(1)

    def start(self):
        subprocess.run(["psql", self.postgres, "-q", "-c", f"CREATE DATABASE {self.database}"], check=True)
        self.redis_port = free_port()
        self.start_redis()
        key = subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True, text=True, check=True).stdout
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERLY_")}
        self.env.update(
            ORDERLY_DATABASE_URL=re.sub(r"/[^/]*$", f"/{self.database}", self.postgres),
            ORDERLY_JWT_PRIVATE_KEY=key,
            ORDERLY_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}",
            ORDERLY_TRUSTED_PROXIES="127.0.0.1",
            ORDERLY_RATE_LIMIT_ANONYMOUS=f"{QUOTA}/60s",
            ORDERLY_RATE_LIMIT_USER="100000/60s",
            ORDERLY_RATE_LIMIT_CREDENTIALS="100000/60s",
            ORDERLY_RATE_LIMIT_ACCOUNT_LOGIN="100000/60s",
            ORDERLY_LOG_FORMAT="json",
            ORDERLY_SHUTDOWN_GRACE="2s",
            # The instances serve; one worker does the background work, through RabbitMQ.
            ORDERLY_AMQP_URL=self.amqp,
            ORDERLY_AMQP_JOBS_QUEUE=f"orderly.jobs.{self.database}",
            ORDERLY_RUN_WORKER="false",
        )
        subprocess.run([self.binary, "migrate"], env=self.env, check=True, capture_output=True, timeout=60)
        subprocess.run(
            [self.binary, "admin", "create-user", "--email", ADMIN_EMAIL, "--role", "admin"],
            env={**self.env, "ORDERLY_ADMIN_PASSWORD": ADMIN_PASSWORD}, check=True, capture_output=True, timeout=60,
        )
        for index in range(3):
            self.instances.append([free_port(), None])
            self.start_instance(index)
        self.worker_port = free_port()
        log = open(os.path.join(self.workdir, "worker.log"), "a")
        self.worker = subprocess.Popen(
            [self.binary, "worker"], env={**self.env, "ORDERLY_WORKER_LISTEN": f"127.0.0.1:{self.worker_port}"},
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until("the worker is ready", lambda: request(self.worker_url(), "GET", "/readyz").status == 200)
        self.lb_port = free_port()
        self.start_nginx()
        self.lb = f"http://127.0.0.1:{self.lb_port}"
        wait_until("the load balancer answers", lambda: request(self.lb, "GET", "/readyz").status == 200)

    def log_path(self, index):
        return os.path.join(self.workdir, f"instance-{index + 1}.log")

    def start_instance(self, index):
        port = self.instances[index][0]
        log = open(self.log_path(index), "a")
        process = subprocess.Popen(
            [self.binary, "serve"], env={**self.env, "ORDERLY_LISTEN": f"127.0.0.1:{port}"}, stdout=log, stderr=subprocess.STDOUT,
        )
        self.instances[index][1] = process
        wait_until(f"instance {index + 1} is ready", lambda: request(self.direct(index), "GET", "/readyz").status == 200)

    def direct(self, index):
        return f"http://127.0.0.1:{self.instances[index][0]}"

    def start_redis(self):
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_until("redis-server listens", lambda: port_open(self.redis_port))

    def kill_redis(self):
        self.redis.kill()
        self.redis.wait()

    def start_nginx(self):
        with open(os.path.join(ROOT, "deploy", "nginx.conf")) as source:
            conf = source.read()
        servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port, _ in self.instances)
        conf, replaced = re.subn(r"(?m)^\s*server api\d:8080[^\n]*\n", "", conf)
        expect(replaced == 2, "deploy/nginx.conf lists the compose file's two API instances")
        conf = conf.replace("least_conn;", "least_conn;\n" + servers, 1)
        conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{self.lb_port};", 1)
        temp = os.path.join(self.workdir, "nginx")
        os.makedirs(temp, mode=0o777)
        os.chmod(temp, 0o777)
        conf = conf.replace("http {", f"""http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;""", 1)
        conf = f"pid {temp}/nginx.pid;\nerror_log {temp}/error.log warn;\n" + conf.replace("worker_processes auto;", "worker_processes 1;")
        path = os.path.join(self.workdir, "nginx.conf")
        with open(path, "w") as rendered:
            rendered.write(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = subprocess.Popen(
            [nginx, "-p", temp, "-c", path, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_until("nginx listens", lambda: port_open(self.lb_port) or self.nginx.poll() is not None)
        expect(self.nginx.poll() is None, f"nginx started: {self.nginx.stderr.read().decode(errors='replace')}")

    def worker_url(self):
        return f"http://127.0.0.1:{self.worker_port}"

    def stop(self):
        if self.worker and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.worker.kill()
        for _, process in self.instances:
            if process and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in self.instances:
            if process:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
        if self.nginx and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # the master stops its workers too
            try:
                self.nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
        if self.redis and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait()
        subprocess.run(["psql", self.postgres, "-q", "-c", f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)"], capture_output=True)
        if not os.environ.get("ORDERLY_CLUSTER_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def scrape(self, index):
        """`{series: value}` of one instance's /metrics (`None`: the worker's)."""
        base = self.worker_url() if index is None else self.direct(index)
        body = request(base, "GET", "/metrics").body.decode()
        series = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                series[name] = float(value)
        return series

    def served(self, index, route, method="GET"):
        """Requests an instance has answered on a route, whatever the status."""
        prefix = f'http_requests_total{{method="{method}",route="{route}",'
        return sum(value for name, value in self.scrape(index).items() if name.startswith(prefix))

    # Shared fixtures, made through the load balancer.
    def admin_token(self):
        return form_login(self.lb, ADMIN_EMAIL, ADMIN_PASSWORD)["access_token"]

    def new_customer(self):
        email = f"customer-{uuid.uuid4().hex[:10]}@example.com"
        registered = request(self.lb, "POST", "/api/v1/auth/register", {"email": email, "password": "customer-password", "name": "C"})
        expect(registered.status == 201, f"registration: {registered.status} {registered.body[:200]}")
        return form_login(self.lb, email, "customer-password")

    def new_product(self, token, stock):
        created = request(
            self.lb, "POST", "/api/v1/products",
            {"sku": f"CL-{uuid.uuid4().hex[:12]}", "name": "Cluster product", "unit_price": 1000, "currency": "USD", "stock": stock},
            token=token,
        )
        expect(created.status == 201, f"product creation: {created.status} {created.body[:200]}")
        return created.json()["id"]


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- the checks ---------------------------------------------------------------------------


def tokens_work_on_every_instance(cluster):
    tokens = cluster.new_customer()
    for index in range(3):
        me = request(cluster.direct(index), "GET", "/api/v1/users/me", token=tokens["access_token"])
        expect(me.status == 200, f"a token from the load balancer works on instance {index + 1}: {me.status}")
    # A refresh token rotated through one instance is spent on all of them.
    refresh = tokens["refresh_token"]
    data = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": refresh}).encode()
    first = urllib.request.urlopen(urllib.request.Request(cluster.direct(0) + "/api/v1/auth/token", data=data, method="POST"), timeout=10)
    expect(first.status == 200, "a refresh token is accepted once")
    try:
        urllib.request.urlopen(urllib.request.Request(cluster.direct(2) + "/api/v1/auth/token", data=data, method="POST"), timeout=10)
        raise CheckFailed("a spent refresh token was accepted by another instance")
    except urllib.error.HTTPError as error:
        expect(error.code == 400, f"a spent refresh token is refused elsewhere: {error.code}")


def idempotency_keys_replay_on_any_instance(cluster):
    admin = cluster.admin_token()
    product = cluster.new_product(admin, 100)
    customer = cluster.new_customer()["access_token"]
    key = str(uuid.uuid4())
    order = {"items": [{"product_id": product, "quantity": 2}]}
    before = [cluster.scrape(i).get("idempotency_replays_total", 0) for i in range(3)]
    first = request(cluster.lb, "POST", "/api/v1/orders", order, token=customer, headers={"Idempotency-Key": key})
    expect(first.status == 201, f"the first request runs: {first.status} {first.body[:200]}")
    retries = [request(cluster.lb, "POST", "/api/v1/orders", order, token=customer, headers={"Idempotency-Key": key}) for _ in range(6)]
    retries += [request(cluster.direct(i), "POST", "/api/v1/orders", order, token=customer, headers={"Idempotency-Key": key}) for i in range(3)]
    for retry in retries:
        expect(retry.status == 201 and retry.body == first.body, "a retry replays the first response byte for byte")
        expect(retry.headers.get("Idempotent-Replayed") == "true", "a replay says so")
    after = [cluster.scrape(i).get("idempotency_replays_total", 0) for i in range(3)]
    expect(all(a > b for a, b in zip(after, before)), f"every instance replayed: {before} -> {after}")
    orders = request(cluster.lb, "GET", "/api/v1/orders", token=customer).json()["data"]
    expect(len(orders) == 1, f"one order for one key, not {len(orders)}")
    stock = request(cluster.lb, "GET", f"/api/v1/products/{product}").json()["stock"]
    expect(stock == 98, f"stock taken once: {stock}")


def updates_are_never_served_stale(cluster):
    admin = cluster.admin_token()
    product = cluster.new_product(admin, 10)
    for price in range(2000, 2020):
        for index in range(3):  # warm every instance's view of the cache
            request(cluster.direct(index), "GET", f"/api/v1/products/{product}")
        updated = request(cluster.lb, "PATCH", f"/api/v1/products/{product}", {"unit_price": price}, token=admin)
        expect(updated.status == 200, f"update: {updated.status}")
        views = [request(cluster.lb, "GET", f"/api/v1/products/{product}") for _ in range(3)]
        views += [request(cluster.direct(i), "GET", f"/api/v1/products/{product}") for i in range(3)]
        prices = [view.json()["unit_price"] for view in views]
        expect(all(p == price for p in prices), f"after the update to {price} returned, reads saw {prices}")


def admitted_of(cluster, client, attempts):
    statuses = [request(cluster.lb, "GET", "/api/v1/products", client=client).status for _ in range(attempts)]
    expect(set(statuses) <= {200, 429}, f"only 200 and 429: {sorted(set(statuses))}")
    return statuses.count(200)


def rate_limits_are_global(cluster):
    before = [cluster.served(i, "/api/v1/products") for i in range(3)]
    admitted = admitted_of(cluster, "203.0.113.7", 2 * QUOTA)
    after = [cluster.served(i, "/api/v1/products") for i in range(3)]
    expect(all(a > b for a, b in zip(after, before)), f"the load balancer spread the requests: {before} -> {after}")
    # The bucket refills one request every 2 s; the run takes about a second.
    expect(QUOTA <= admitted <= QUOTA + 1, f"{QUOTA} per minute across three instances admitted {admitted}")
    refused = request(cluster.lb, "GET", "/api/v1/products", client="203.0.113.7")
    expect(refused.status == 429 and int(refused.headers["Retry-After"]) >= 1, "429 with Retry-After")
    expect(refused.headers.get("RateLimit-Policy") == f'"anonymous";q={QUOTA};w=60', refused.headers.get("RateLimit-Policy"))


def redis_outage_degrades_without_errors(cluster):
    admin = cluster.admin_token()
    customer = cluster.new_customer()["access_token"]
    product = cluster.new_product(admin, 1000)
    cluster.kill_redis()
    statuses = []
    for price in range(3000, 3010):
        statuses.append(request(cluster.lb, "PATCH", f"/api/v1/products/{product}", {"unit_price": price}, token=admin).status)
        view = request(cluster.lb, "GET", f"/api/v1/products/{product}")
        statuses.append(view.status)
        expect(view.status != 200 or view.json()["unit_price"] == price, "fresh reads while Redis is down")
        statuses.append(request(cluster.lb, "POST", "/api/v1/orders", {"items": [{"product_id": product, "quantity": 1}]},
                                token=customer, headers={"Idempotency-Key": str(uuid.uuid4())}).status)
        statuses.append(request(cluster.lb, "GET", "/api/v1/orders", token=customer).status)
    expect(all(200 <= s < 300 for s in statuses), f"no failures while Redis is down: {sorted(set(statuses))}")
    ready = request(cluster.lb, "GET", "/readyz")
    expect(ready.status == 200 and ready.json()["checks"]["redis"].startswith("degraded"), f"readiness holds: {ready.body}")
    cluster.start_redis()
    # Each instance probes Redis again within about a second of a request; then quotas are
    # global again.
    for attempt in range(5):
        time.sleep(1.5)
        for index in range(3):
            request(cluster.direct(index), "GET", "/api/v1/products")
        admitted = admitted_of(cluster, f"203.0.113.{100 + attempt}", 2 * QUOTA)
        if admitted <= QUOTA + 1:
            return
    raise CheckFailed(f"quotas were not global again after Redis restarted: {admitted} admitted")


def sigkill_loses_no_acknowledged_write(cluster):
    admin = cluster.admin_token()
    customer = cluster.new_customer()["access_token"]
    product = cluster.new_product(admin, 100000)
    acknowledged, attempted, failures, retried = {}, set(), [], []
    lock = threading.Lock()
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            key = str(uuid.uuid4())
            with lock:
                attempted.add(key)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                response = request(cluster.lb, "POST", "/api/v1/orders", {"items": [{"product_id": product, "quantity": 1}]},
                                   token=customer, headers={"Idempotency-Key": key})
                if response.status == 201:
                    with lock:
                        acknowledged[key] = response.json()["id"]
                    break
                if response.status in (0, 409, 502, 503, 504):
                    retried.append(response.status)
                    time.sleep(0.2)  # the instance died mid-request, or the first try still holds the key
                    continue
                failures.append((response.status, response.body[:200]))
                break

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(writer) for _ in range(4)]
        time.sleep(2)
        victim = cluster.instances[1][1]
        victim.kill()  # SIGKILL
        victim.wait()
        time.sleep(3)
        stop.set()
        for worker in workers:
            worker.result()
    expect(not failures, f"requests failed outright: {failures[:3]}")
    expect(len(acknowledged) >= 20, f"traffic flowed: {len(acknowledged)} orders acknowledged")
    for key, order_id in acknowledged.items():
        found = request(cluster.lb, "GET", f"/api/v1/orders/{order_id}", token=customer)
        expect(found.status == 200, f"acknowledged order {order_id} exists: {found.status}")
    listed, cursor = [], None
    while True:
        page = request(cluster.lb, "GET", "/api/v1/orders?limit=100" + (f"&cursor={cursor}" if cursor else ""), token=customer).json()
        listed += [order["id"] for order in page["data"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    expect(len(set(listed)) == len(listed), "orders are listed once each")
    expect(set(acknowledged.values()) <= set(listed), "every acknowledged order is listed")
    expect(len(listed) <= len(attempted), f"no key made two orders: {len(listed)} orders from {len(attempted)} keys")
    stock = request(cluster.lb, "GET", f"/api/v1/products/{product}").json()["stock"]
    expect(stock == 100000 - len(listed), f"stock matches the orders: {stock} vs {len(listed)} orders")
    cluster.start_instance(1)
    me = request(cluster.direct(1), "GET", "/api/v1/users/me", token=customer)
    expect(me.status == 200, "the killed instance serves again after a restart")
    print(
        f"cluster:     {len(acknowledged)} orders acknowledged under SIGKILL, {len(listed)} stored; "
        f"{len(retried)} tries retried under the same key ({sorted(set(retried))})",
        flush=True,
    )


def the_worker_publishes_every_event(cluster):
    """Every order the checks placed wrote its event; the worker publishes them all to RabbitMQ."""
    def drained():
        metrics = cluster.scrape(None)
        return metrics.get("orderly_outbox_backlog") == 0 and metrics.get("orderly_events_published_total", 0) > 0
    wait_until("the worker has published every event", drained, timeout=30)
    published = cluster.scrape(None)["orderly_events_published_total"]
    print(f"cluster:     {published:.0f} events published to RabbitMQ by the worker, none waiting")


if __name__ == "__main__":
    main()
