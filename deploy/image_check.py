#!/usr/bin/env python3
"""Builds the Docker image and runs it: ready on PostgreSQL, Redis and RabbitMQ, takes an order
as a non-root process, and stops cleanly on SIGTERM.

Where no image registry is reachable (CI here), the base image the Dockerfile names is made
locally (`debootstrap` + `docker import`, tagged with that name), and the image's runtime stage
is built around a binary built on the host (`--build-arg BINARY_FROM=prebuilt`): the Rust stage
needs a toolchain image that cannot be fetched. A user with a registry runs `docker build .`.

    python3 deploy/image_check.py --binary target/debug/orderly \\
        --postgres postgres://postgres@127.0.0.1:5432/postgres \\
        --redis redis://127.0.0.1:6379 --amqp amqp://guest:guest@127.0.0.1:5672/%2f

Starts `dockerd` when no daemon answers. Sends traffic only to 127.0.0.1; stops by itself.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_IMAGE = "gcr.io/distroless/cc-debian12:nonroot"
IMAGE = "orderly:check"
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
ADMIN_EMAIL, ADMIN_PASSWORD = "image-admin@example.com", "image-admin-password"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True, help="the orderly binary to put in the image")
    parser.add_argument("--postgres", required=True, help="a PostgreSQL URL; a fresh database is made through it")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--amqp", required=True)
    args = parser.parse_args()
    ensure_daemon()
    ensure_base_image()
    build(args.binary)
    database = f"orderly_image_{uuid.uuid4().hex[:8]}"
    subprocess.run(["psql", args.postgres, "-q", "-c", f"CREATE DATABASE {database}"], check=True)
    try:
        check(args, re.sub(r"/[^/]*$", f"/{database}", args.postgres))
    finally:
        subprocess.run(["psql", args.postgres, "-q", "-c", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], check=False)
    print("image: all checks passed")


def docker(*arguments, check=True, capture=True, timeout=600, **kwargs):
    return subprocess.run([DOCKER, *arguments], check=check, capture_output=capture, text=True, timeout=timeout, **kwargs)


def ensure_daemon():
    if docker("info", check=False).returncode == 0:
        return
    print("image: starting dockerd")
    log = open(os.path.join(tempfile.gettempdir(), "orderly-dockerd.log"), "ab")
    subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    wait_until("dockerd answers", lambda: docker("info", check=False).returncode == 0, timeout=60)


def ensure_base_image():
    if docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    print(f"image: making {BASE_IMAGE} locally (debootstrap)")
    rootfs = tempfile.mkdtemp(prefix="orderly-rootfs-")
    try:
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", rootfs, "http://deb.debian.org/debian"],
                       check=True, capture_output=True, timeout=900)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([DOCKER, "import", "-", BASE_IMAGE], stdin=tar.stdout, check=True, capture_output=True, timeout=600)
        tar.wait()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


def build(binary):
    context = tempfile.mkdtemp(prefix="orderly-image-")
    try:
        shutil.copy(binary, os.path.join(context, "orderly"))
        os.mkdir(os.path.join(context, "data"))
        docker("build", "-q", "-f", os.path.join(ROOT, "Dockerfile"), "--build-arg", "BINARY_FROM=prebuilt", "-t", IMAGE, context,
               env={**os.environ, "DOCKER_BUILDKIT": "1"})
    finally:
        shutil.rmtree(context, ignore_errors=True)
    config = json.loads(docker("image", "inspect", IMAGE).stdout)[0]["Config"]
    expect(config["User"] == "65532:65532", f"the image runs as 65532, not {config['User']!r}")
    expect(config["Entrypoint"] == ["/usr/local/bin/orderly"], f"entrypoint {config['Entrypoint']}")
    expect(not config.get("Healthcheck"), "the image has no HEALTHCHECK")


def check(args, database_url):
    key = subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True, text=True, check=True).stdout
    port, worker_port = free_port(), free_port()
    env = {
        "ORDERLY_DATABASE_URL": database_url,
        "ORDERLY_JWT_PRIVATE_KEY": key,
        "ORDERLY_REDIS_URL": args.redis,
        "ORDERLY_AMQP_URL": args.amqp,
        "ORDERLY_AMQP_JOBS_QUEUE": f"orderly.jobs.image-{uuid.uuid4().hex[:8]}",
        "ORDERLY_LISTEN": f"127.0.0.1:{port}",
        "ORDERLY_WORKER_LISTEN": f"127.0.0.1:{worker_port}",
        "ORDERLY_SHUTDOWN_DRAIN_DELAY": "0s",
        "ORDERLY_SHUTDOWN_GRACE": "5s",
    }
    flags = [flag for name, value in env.items() for flag in ("-e", f"{name}={value}")]
    # The admin is made with the image itself, as an operator would.
    docker("run", "--rm", "--network", "host", *flags, "-e", f"ORDERLY_ADMIN_PASSWORD={ADMIN_PASSWORD}", IMAGE,
           "admin", "create-user", "--email", ADMIN_EMAIL, "--role", "admin")
    container = docker("run", "-d", "--network", "host", "--read-only", "--cap-drop", "ALL", *flags, IMAGE, "serve").stdout.strip()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until("the container is ready", lambda: status(base, "/readyz") == 200, timeout=60)
        ready = json.loads(request(base, "GET", "/readyz")[1])
        print(f"image: ready: {json.dumps(ready)}")
        pid = json.loads(docker("inspect", container).stdout)[0]["State"]["Pid"]
        with open(f"/proc/{pid}/status") as process:
            uids = next(line.split()[1:] for line in process if line.startswith("Uid:"))
        expect(set(uids) == {"65532"}, f"orderly runs as 65532, not {uids}")
        admin = login(base, ADMIN_EMAIL, ADMIN_PASSWORD)
        email = f"customer-{uuid.uuid4().hex[:8]}@example.com"
        code, _ = request(base, "POST", "/api/v1/auth/register", {"email": email, "password": "customer-password", "name": "C"})
        expect(code == 201, f"registration: {code}")
        customer = login(base, email, "customer-password")
        product = {"sku": f"IMG-{uuid.uuid4().hex[:10]}", "name": "Image check", "unit_price": 1500, "currency": "USD", "stock": 3}
        code, body = request(base, "POST", "/api/v1/products", product, token=admin)
        expect(code == 201, f"product: {code} {body[:200]}")
        order = {"items": [{"product_id": json.loads(body)["id"], "quantity": 1}]}
        code, body = request(base, "POST", "/api/v1/orders", order, token=customer, headers={"Idempotency-Key": str(uuid.uuid4())})
        expect(code == 201, f"order: {code} {body[:200]}")
        print(f"image: order {json.loads(body)['id']} placed")
        started = time.monotonic()
        docker("stop", "-t", "30", container)
        stopped_in = time.monotonic() - started
        state = json.loads(docker("inspect", container).stdout)[0]["State"]
        expect(state["ExitCode"] == 0, f"SIGTERM ends the process cleanly (exit {state['ExitCode']})")
        expect(stopped_in < 20, f"it stops within its grace ({stopped_in:.1f} s)")
        print(f"image: stopped on SIGTERM in {stopped_in:.1f} s, exit 0")
    except BaseException:
        print(docker("logs", "--tail", "50", container, check=False).stderr[-4000:], file=sys.stderr)
        raise
    finally:
        docker("rm", "-f", container, check=False)


def request(base, method, path, body=None, token=None, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    all_headers.update(headers or {})
    req = urllib.request.Request(base + path, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
        return 0, ""


def status(base, path):
    return request(base, "GET", path)[0]


def login(base, email, password):
    data = urllib.parse.urlencode({"grant_type": "password", "username": email, "password": password}).encode()
    req = urllib.request.Request(base + "/api/v1/auth/token", data=data, method="POST")
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())["access_token"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    sys.exit(f"image: timed out waiting until {what}")


def expect(condition, message):
    if not condition:
        sys.exit(f"image: FAILED: {message}")


if __name__ == "__main__":
    main()
