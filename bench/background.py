#!/usr/bin/env python3
"""Background-work benchmark: the relay's throughput to RabbitMQ, report exports, and webhook
deliveries.

    python3 bench/background.py --pin                      # SQLite
    python3 bench/background.py --pin --postgres URL       # SQLite, then PostgreSQL

Relay: `--events` events (distinct orders' `order.created`, as a burst of orders leaves them) are
written to a fresh outbox, a durable queue is bound to `orderly.events`, and `orderly worker`
(pinned to CPU 0 with `--pin`) publishes them with publisher confirms; the figures are events
per second of wall time until the queue holds them all, and per second of the worker's CPU.

Reports: `--orders` orders are written to a fresh database, `orderly serve` (running the
background work in-process) generates an admin's `orders_csv` report, which is then downloaded;
the figures are rows per second of generation, the download's throughput, and the server's RSS
at rest against its peak (`VmHWM`) during generation and download.

Webhooks: `--endpoints` endpoints registered through the API, all pointing at a local nginx that
answers 204; then `--hooked-events` events are written to the outbox of a running `orderly serve`
(background work in-process), whose relay offers each to every endpoint and whose runner sends
them; the figures are deliveries per second until all have succeeded, and per CPU-second.

Needs cargo, nginx for the webhooks, RabbitMQ (`--amqp`), psql for PostgreSQL, and `pika` (installed on first use into a
virtualenv at ~/.cache/orderly-bench-venv).
"""

import argparse
import datetime
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
VENV = os.path.expanduser("~/.cache/orderly-bench-venv")

try:
    import pika
except ImportError:
    if os.environ.get("ORDERLY_BENCH_VENV") == "1":
        sys.exit("pika is not importable in the bench virtualenv")
    if not os.path.exists(os.path.join(VENV, "bin", "python")):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True, timeout=120)
        subprocess.run([os.path.join(VENV, "bin", "python"), "-m", "pip", "install", "--quiet", "pika==1.3.2"],
                       check=True, timeout=600)
    os.execve(os.path.join(VENV, "bin", "python"), [os.path.join(VENV, "bin", "python"), *sys.argv],
              {**os.environ, "ORDERLY_BENCH_VENV": "1"})

sys.path.insert(0, HERE)
from run import ADMIN_EMAIL, ADMIN_PASSWORD, build, free_port, request, token, with_database  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ORDER_ITEMS = ('[{"product_id":"0193b1e8-0000-7000-8000-000000000001","sku":"BENCH-1","name":"Bench item",'
               '"unit_price":1250,"quantity":2,"line_total":2500}]')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", metavar="URL", help="also run on PostgreSQL; a fresh database is created through this URL")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/%2f", help="RabbitMQ (default: the local one)")
    parser.add_argument("--events", type=int, default=100_000, help="events the relay publishes (default 100000)")
    parser.add_argument("--orders", type=int, default=200_000, help="orders in the report (default 200000)")
    parser.add_argument("--pin", action="store_true", help="pin the Orderly process to CPU 0 (taskset)")
    parser.add_argument("--skip-build", action="store_true", help="use the release binary as it is")
    parser.add_argument("--only", choices=["relay", "report", "webhooks"], help="run one of the three")
    parser.add_argument("--endpoints", type=int, default=4, help="webhook endpoints (default 4)")
    parser.add_argument("--hooked-events", type=int, default=5_000, help="events offered to the endpoints (default 5000)")
    parser.add_argument("--json", metavar="FILE", help="also append the JSON lines to FILE")
    parser.add_argument("--server-env", metavar="KEY=VALUE", action="append", default=[],
                        help="extra environment for the Orderly process, e.g. ORDERLY_RELAY_BATCH=1000 (repeatable)")
    args = parser.parse_args()
    binary = build(args.skip_build)
    backends = ["sqlite"] + (["postgres"] if args.postgres else [])
    rows = []
    for backend in backends:
        if args.only in (None, "relay"):
            rows.append(bench_relay(binary, backend, args))
            print(json.dumps(rows[-1]), flush=True)
        if args.only in (None, "report"):
            rows.append(bench_report(binary, backend, args))
            print(json.dumps(rows[-1]), flush=True)
        if args.only in (None, "webhooks"):
            rows.append(bench_webhooks(binary, backend, args))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "a") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")


AT_MS = 1_796_040_000_123  # 2026-11-30T12:00:00.123Z: the first bench event's `created_at`, one a millisecond


def at_text(milliseconds):
    """`created_at` as the app stores it on SQLite (whole milliseconds: three digits, none at .000)."""
    at = datetime.datetime.fromtimestamp(milliseconds // 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f".{milliseconds % 1000:03d}" if milliseconds % 1000 else ""
    return f"{at}{fraction}+00:00"


def uuid_v7_at(milliseconds):
    """A UUIDv7 whose timestamp is `milliseconds`, as the app mints event ids."""
    value = (milliseconds << 80) | (0x7 << 76) | (uuid.uuid4().int & ((1 << 76) - 1))
    value = (value & ~(0b11 << 62)) | (0b10 << 62)  # the RFC 4122 variant
    return uuid.UUID(int=value)


class Database:
    """A fresh, migrated database (SQLite file or PostgreSQL database), dropped on exit."""

    def __init__(self, binary, backend, postgres_url):
        self.binary, self.backend, self.postgres_url = binary, backend, postgres_url
        self.workdir = tempfile.mkdtemp(prefix=f"orderly-bench-bg-{backend}-")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERLY_")}
        self.env.update(ORDERLY_DATA_DIR=self.workdir, ORDERLY_LOG_FORMAT="json", ORDERLY_ACCESS_TOKEN_TTL="6h")
        if backend == "sqlite":
            self.path = os.path.join(self.workdir, "orderly.db")
            self.env["ORDERLY_DATABASE_URL"] = f"sqlite://{self.path}"
        else:
            self.name = f"orderly_bench_{uuid.uuid4().hex[:12]}"
            subprocess.run(["psql", postgres_url, "-q", "-c", f"CREATE DATABASE {self.name}"], check=True)
            self.url = with_database(postgres_url, self.name)
            self.env["ORDERLY_DATABASE_URL"] = self.url
            key = subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True, text=True, check=True).stdout
            self.env["ORDERLY_JWT_PRIVATE_KEY"] = key
        subprocess.run([binary, "migrate"], env=self.env, check=True, capture_output=True, timeout=120)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.backend == "postgres":
            subprocess.run(["psql", self.postgres_url, "-q", "-c", f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"], check=False)
        subprocess.run(["rm", "-rf", self.workdir], check=False)

    def sql(self, statement):
        if self.backend == "postgres":
            subprocess.run(["psql", self.url, "-q", "-v", "ON_ERROR_STOP=1", "-c", statement], check=True, timeout=600)
        else:
            with sqlite3.connect(self.path) as connection:
                connection.execute(statement)

    def count(self, query):
        """The integer one query answers."""
        if self.backend == "postgres":
            out = subprocess.run(["psql", self.url, "-tA", "-c", query], check=True, capture_output=True, text=True, timeout=60)
            return int(out.stdout.strip())
        with sqlite3.connect(self.path, timeout=30) as connection:
            return connection.execute(query).fetchone()[0]

    def insert_events(self, count):
        object_json = json.dumps({"id": "x", "status": "pending", "items": json.loads(ORDER_ITEMS), "currency": "USD", "total": 2500})
        if self.backend == "postgres":
            # Ids as the app mints them: UUIDv7 whose timestamp is the event's `created_at` (its
            # lookup by id reads the `created_at` index within the id's millisecond).
            self.sql("INSERT INTO events (id, type, aggregate_id, created_at, body) "
                     "SELECT encode(set_byte(overlay(uuid_send(gen_random_uuid()) placing "
                     "substring(int8send((extract(epoch FROM t.at) * 1000)::bigint + g) FROM 3) FROM 1 FOR 6), 6, "
                     "(get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112), 'hex')::uuid, "
                     "'order.created', gen_random_uuid(), t.at + g * interval '1 millisecond', "
                     f"'{{\"id\":\"' || g || '\",\"type\":\"order.created\",\"data\":{{\"object\":{object_json}}}}}' "
                     f"FROM generate_series(1, {count}) AS g, (SELECT date_trunc('milliseconds', now()) AS at) AS t")
        else:
            with sqlite3.connect(self.path) as connection:
                connection.executemany(
                    "INSERT INTO events (id, type, aggregate_id, created_at, body) VALUES (?, 'order.created', ?, ?, ?)",
                    ((uuid_v7_at(AT_MS + n).bytes, uuid.uuid4().bytes, at_text(AT_MS + n),
                      json.dumps({"id": str(n), "type": "order.created", "data": {"object": json.loads(object_json)}}))
                     for n in range(count)),
                )

    def insert_orders(self, user_id, count):
        if self.backend == "postgres":
            self.sql("INSERT INTO orders (id, user_id, status, currency, total, version, created_at, updated_at, items) "
                     f"SELECT gen_random_uuid(), '{user_id}', 'paid', 'USD', 2500, 2, "
                     "timestamptz '2026-01-01 00:00:00Z' + g * interval '1 millisecond', "
                     "timestamptz '2026-01-01 00:00:00Z' + g * interval '1 millisecond', "
                     f"'{ORDER_ITEMS}' FROM generate_series(1, {count}) AS g")
        else:
            # Timestamps as the app writes them (six fraction digits when the microseconds are not
            # a whole millisecond), so text comparison orders them as it does the app's.
            start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
            user = uuid.UUID(user_id).bytes

            def rows():
                for n in range(count):
                    at = (start + datetime.timedelta(microseconds=1000 * n + 1)).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
                    yield uuid.uuid4().bytes, user, at, at

            with sqlite3.connect(self.path) as connection:
                connection.executemany(
                    "INSERT INTO orders (id, user_id, status, currency, total, version, created_at, updated_at, items) "
                    f"VALUES (?, ?, 'paid', 'USD', 2500, 2, ?, ?, '{ORDER_ITEMS}')",
                    rows(),
                )


def extra_env(args):
    return dict(pair.split("=", 1) for pair in args.server_env)


def start(binary, command, env, pin):
    prefix = ["taskset", "-c", "0"] if pin else []
    log = open(os.path.join(env["ORDERLY_DATA_DIR"], f"{command}.log"), "w")
    return subprocess.Popen(prefix + [binary, command], env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(port, process, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/readyz")[0] == 200:
                return
        except OSError:
            pass
        if process.poll() is not None:
            sys.exit("orderly exited at start")
        time.sleep(0.05)
    sys.exit("orderly did not become ready")


def stop(process):
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def bench_relay(binary, backend, args):
    with Database(binary, backend, args.postgres) as db:
        db.insert_events(args.events)
        connection = pika.BlockingConnection(pika.URLParameters(args.amqp))
        channel = connection.channel()
        channel.exchange_declare("orderly.events", exchange_type="topic", durable=True)
        queue = f"orderly-bench-{uuid.uuid4().hex[:12]}"
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, "orderly.events", routing_key="#")
        port = free_port()
        env = {**db.env, "ORDERLY_AMQP_URL": args.amqp, "ORDERLY_WORKER_LISTEN": f"127.0.0.1:{port}",
               "ORDERLY_AMQP_JOBS_QUEUE": f"{queue}.jobs", **extra_env(args)}
        started = time.monotonic()
        worker = start(binary, "worker", env, args.pin)
        try:
            deadline = started + 600
            while True:
                count = channel.queue_declare(queue, durable=True, passive=True).method.message_count
                if count >= args.events or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(worker.pid)
        finally:
            stop(worker)
            for name in (queue, f"{queue}.jobs", f"{queue}.jobs.dead"):
                channel.queue_delete(name)
            channel.exchange_delete(f"{queue}.jobs.dead")
            connection.close()
        return {
            "bench": "relay", "backend": backend, "events": args.events, "published": count,
            "seconds": round(elapsed, 2), "events_per_s": round(count / elapsed),
            "worker_cpu_s": round(cpu, 2), "events_per_cpu_s": round(count / cpu) if cpu else None,
        }


def bench_report(binary, backend, args):
    with Database(binary, backend, args.postgres) as db:
        subprocess.run([binary, "admin", "create-user", "--email", ADMIN_EMAIL, "--role", "admin"],
                       env={**db.env, "ORDERLY_ADMIN_PASSWORD": ADMIN_PASSWORD}, check=True, capture_output=True, timeout=60)
        port = free_port()
        env = {**db.env, "ORDERLY_LISTEN": f"127.0.0.1:{port}", "ORDERLY_JOB_POLL_INTERVAL": "100ms", **extra_env(args)}
        server = start(binary, "serve", env, args.pin)
        try:
            wait_ready(port, server)
            bearer = token(port, ADMIN_EMAIL, ADMIN_PASSWORD)
            me = json.loads(request(port, "GET", "/api/v1/users/me", bearer=bearer)[2])
            db.insert_orders(me["id"], args.orders)
            # At rest: started, one request served, a moment to settle.
            time.sleep(1)
            idle_kib = status_kib(server.pid, "VmRSS")
            with open(f"/proc/{server.pid}/clear_refs", "w") as refs:
                refs.write("5")
            started = time.monotonic()
            status, headers, body = request(port, "POST", "/api/v1/reports", {"kind": "orders_csv"}, bearer=bearer)
            assert status == 202, (status, body)
            location = headers["location"]
            while True:
                report = json.loads(request(port, "GET", location, bearer=bearer)[2])
                if report["status"] in ("succeeded", "failed") or time.monotonic() - started > 600:
                    break
                time.sleep(0.05)
            generation = time.monotonic() - started
            assert report["status"] == "succeeded", report
            downloaded, lines = 0, 0
            import http.client
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            download_started = time.monotonic()
            connection.request("GET", report["download_url"], headers={"Authorization": f"Bearer {bearer}"})
            response = connection.getresponse()
            assert response.status == 200, response.status
            while chunk := response.read(64 * 1024):
                downloaded += len(chunk)
                lines += chunk.count(b"\n")
            download = time.monotonic() - download_started
            connection.close()
            peak_kib = status_kib(server.pid, "VmHWM")
        finally:
            stop(server)
        return {
            "bench": "report", "backend": backend, "rows": report["row_count"], "csv_lines": lines,
            "generation_s": round(generation, 2), "rows_per_s": round(report["row_count"] / generation),
            "download_mib": round(downloaded / 2**20, 1), "download_mib_per_s": round(downloaded / 2**20 / download, 1),
            "idle_rss_mib": round(idle_kib / 1024, 1), "peak_rss_mib": round(peak_kib / 1024, 1),
            "peak_over_idle_mib": round((peak_kib - idle_kib) / 1024, 1),
        }


def bench_webhooks(binary, backend, args):
    with Database(binary, backend, args.postgres) as db:
        subprocess.run([binary, "admin", "create-user", "--email", ADMIN_EMAIL, "--role", "admin"],
                       env={**db.env, "ORDERLY_ADMIN_PASSWORD": ADMIN_PASSWORD}, check=True, capture_output=True, timeout=60)
        receiver_port, port = free_port(), free_port()
        nginx = start_receiver(db.workdir, receiver_port)
        env = {**db.env, "ORDERLY_LISTEN": f"127.0.0.1:{port}", "ORDERLY_WEBHOOK_ALLOWED_TARGETS": "127.0.0.1/32",
               "ORDERLY_WEBHOOK_POLL_INTERVAL": "100ms", **extra_env(args)}
        server = start(binary, "serve", env, args.pin)
        try:
            wait_ready(port, server)
            bearer = token(port, ADMIN_EMAIL, ADMIN_PASSWORD)
            for index in range(args.endpoints):
                endpoint = {"url": f"http://127.0.0.1:{receiver_port}/hook/{index}", "events": ["*"]}
                status, _, body = request(port, "POST", "/api/v1/webhooks", endpoint, bearer=bearer)
                assert status == 201, (status, body)
            cpu_before = cpu_seconds(server.pid)
            db.insert_events(args.hooked_events)
            started = time.monotonic()
            expected = args.hooked_events * args.endpoints
            while True:
                done = db.count("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'succeeded'")
                if done >= expected or time.monotonic() - started > 600:
                    break
                time.sleep(0.1)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(server.pid) - cpu_before
        finally:
            stop(server)
            stop(nginx)
        return {
            "bench": "webhooks", "backend": backend, "endpoints": args.endpoints, "deliveries": expected, "succeeded": done,
            "seconds": round(elapsed, 2), "deliveries_per_s": round(done / elapsed),
            "server_cpu_s": round(cpu, 2), "deliveries_per_cpu_s": round(done / cpu) if cpu else None,
        }


def start_receiver(workdir, port):
    """nginx on 127.0.0.1:`port` answering every request 204, as a fast webhook receiver would."""
    temp = os.path.join(workdir, "nginx")
    os.makedirs(temp)
    conf = os.path.join(temp, "nginx.conf")
    with open(conf, "w") as out:
        out.write(f"""pid {temp}/nginx.pid;
error_log {temp}/error.log warn;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 204; }}
    }}
}}
""")
    nginx = subprocess.Popen(["taskset", "-c", "1", shutil.which("nginx") or "/usr/sbin/nginx", "-p", temp, "-c", conf,
                              "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    return nginx


if __name__ == "__main__":
    main()
