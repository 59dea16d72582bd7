"""A real `orderly serve` on a free 127.0.0.1 port, for the contract tests.

    with OrderlyServer(binary, backend="sqlite") as server:
        token = server.admin_token()
        ...  # talk to server.base_url

Each server gets a fresh store: a temporary data folder for SQLite, or a new database on the
PostgreSQL server named by `postgres_url` (created before the start, dropped after the stop).
An admin is created with `orderly admin create-user`, its password handed over in
ORDERLY_ADMIN_PASSWORD (never on the command line); `demo=True` also runs `orderly seed
--demo`, whose users and products are the ones the OpenAPI examples name. Rate limits are
generous unless the caller passes its own, so a fuzzer is not throttled into testing only 429s.

Everything is bounded in time: every subprocess has a timeout, readiness is awaited for at most
`ready_timeout` seconds, and `stop()` sends SIGTERM, waits, then SIGKILLs. The temporary folder
(data, server log) is removed on stop unless ORDERLY_CONTRACT_KEEP is set. Only the standard
library is used, so the entry point can import this before its virtualenv exists.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

ADMIN_EMAIL = "contract-admin@example.com"

# High enough that no contract run reaches them; each tier is set so that a fuzzer hammering
# /auth/token or one account is not refused with 429 (which would hide every other answer).
GENEROUS_RATE_LIMITS = {
    "ORDERLY_RATE_LIMIT_ANONYMOUS": "1000000/60s",
    "ORDERLY_RATE_LIMIT_USER": "1000000/60s",
    "ORDERLY_RATE_LIMIT_API_KEY": "1000000/60s",
    "ORDERLY_RATE_LIMIT_CREDENTIALS": "1000000/60s",
    "ORDERLY_RATE_LIMIT_ACCOUNT_LOGIN": "1000000/60s",
}


class ServerError(Exception):
    """The server could not be prepared, started or reached."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrderlyServer:
    """One `orderly serve` process on a fresh store; a context manager.

    `settings` are extra ORDERLY_* variables; they win over the defaults here (give
    ORDERLY_RATE_LIMIT_CREDENTIALS="2/60s" to test throttling). `log_path` keeps the server's
    output somewhere that outlives the server; by default it is in the temporary folder.
    """

    def __init__(self, binary, backend="sqlite", postgres_url=None, settings=None, log_path=None, demo=False,
                 ready_timeout=60):
        if backend not in ("sqlite", "postgres"):
            raise ValueError(f"unknown backend {backend!r}")
        if backend == "postgres" and not postgres_url:
            raise ValueError("the postgres backend needs postgres_url")
        if not os.access(binary, os.X_OK):
            raise ServerError(f"{binary} is not an executable file")
        self.binary = os.path.abspath(binary)
        self.backend = backend
        self.postgres_url = postgres_url
        self.settings = dict(settings or {})
        self.demo = demo
        self.ready_timeout = ready_timeout
        self.workdir = tempfile.mkdtemp(prefix=f"orderly-contract-{backend}-")
        self.log_path = log_path or os.path.join(self.workdir, "server.log")
        # A fresh secret per server: nothing outside this process needs to know it.
        self.admin_email = ADMIN_EMAIL
        self.admin_password = secrets.token_urlsafe(18)
        self.database = None
        self.process = None
        self.port = None

    # --- lifecycle --------------------------------------------------------------------------

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind, value, trace):
        self.stop()

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self):
        return self.base_url + "/api/v1"

    def start(self):
        self.env = self._environment()
        self._run([self.binary, "migrate"])
        self._run(
            [self.binary, "admin", "create-user", "--email", self.admin_email, "--role", "admin"],
            extra_env={"ORDERLY_ADMIN_PASSWORD": self.admin_password},
        )
        if self.demo:
            self._run([self.binary, "seed", "--demo"])
        # The port is free when chosen but may be taken before the server binds it: try again.
        for _ in range(3):
            self.port = free_port()
            self._spawn()
            if self._wait_ready():
                return
            if self.process.poll() is None:
                break  # running but never ready: another port will not help
        raise ServerError(f"orderly serve exited or was not ready within {self.ready_timeout} s\n{self.log_tail()}")

    def stop(self, grace=15):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self.database:
            # FORCE: a connection left by a killed server must not keep the database alive.
            self._psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)", check=False)
            self.database = None
        if not os.environ.get("ORDERLY_CONTRACT_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines=20):
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""

    # --- helpers for callers ----------------------------------------------------------------

    def token(self, email, password, timeout=30):
        """The JSON of a password grant (form-encoded, as RFC 6749 has it)."""
        form = urllib.parse.urlencode({"grant_type": "password", "username": email, "password": password}).encode()
        status, body = http(self.api_url + "/auth/token", data=form, timeout=timeout)
        if status != 200:
            raise ServerError(f"password grant for {email}: {status} {body[:300]!r}")
        return json.loads(body)

    def register(self, email, password, name):
        """Registers a customer through the API."""
        body = json.dumps({"email": email, "password": password, "name": name}).encode()
        status, answer = http(self.api_url + "/auth/register", body, {"content-type": "application/json"})
        if status != 201:
            raise ServerError(f"registering {email}: {status} {answer[:300]!r}")

    def admin_token(self):
        return self.token(self.admin_email, self.admin_password)["access_token"]

    # --- internals --------------------------------------------------------------------------

    def _environment(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERLY_")}
        env.update(GENEROUS_RATE_LIMITS)
        env.update(
            ORDERLY_DATA_DIR=os.path.join(self.workdir, "data"),
            ORDERLY_LOG_FORMAT="json",
            ORDERLY_SHUTDOWN_GRACE="2s",
        )
        if self.backend == "sqlite":
            env["ORDERLY_DATABASE_URL"] = "sqlite://" + os.path.join(self.workdir, "data", "orderly.db")
        else:
            self.database = f"orderly_contract_{uuid.uuid4().hex[:12]}"
            self._psql(f"CREATE DATABASE {self.database}")
            env["ORDERLY_DATABASE_URL"] = with_database(self.postgres_url, self.database)
            env["ORDERLY_JWT_PRIVATE_KEY"] = ed25519_key()
        env.update(self.settings)
        return env

    def _run(self, command, extra_env=None):
        with open(self.log_path, "a") as log:
            result = subprocess.run(
                command, env={**self.env, **(extra_env or {})}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, timeout=120,
            )
        if result.returncode != 0:
            raise ServerError(f"`{' '.join(command[1:])}` exited {result.returncode}\n{self.log_tail()}")

    def _spawn(self):
        log = open(self.log_path, "a")
        try:
            self.process = subprocess.Popen(
                [self.binary, "serve"], env={**self.env, "ORDERLY_LISTEN": f"127.0.0.1:{self.port}"},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()  # the child holds its own descriptor

    def _wait_ready(self):
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            status, _ = http(self.base_url + "/readyz", timeout=2)
            if status == 200:
                return True
            time.sleep(0.1)
        return False

    def _psql(self, sql, check=True):
        if shutil.which("psql") is None:
            raise ServerError("the postgres backend needs `psql` on PATH")
        result = subprocess.run(
            ["psql", self.postgres_url, "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
        if check and result.returncode != 0:
            raise ServerError(f"psql: {sql}: {result.stderr.strip()}")


def with_database(url, database):
    """`url` with its path (the database name) replaced, its query string kept."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + database))


def ed25519_key():
    """A fresh Ed25519 PKCS#8 PEM: PostgreSQL mode requires a signing key."""
    result = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True, text=True, timeout=30, check=True,
    )
    return result.stdout


def http(url, data=None, headers=None, method=None, timeout=10):
    """(status, body bytes) of one request; 0 when nothing answered."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
        return 0, b""
