"""A real S3-compatible server on loopback for tests (moto's server, its own process), and
a fault-injecting HTTP proxy in front of it.

No mocked filesystem: s3fs talks HTTP to moto exactly as it talks to S3.

``MotoServer(counting=True)`` runs moto's own WSGI app (what ``python -m moto.server`` runs)
behind a small middleware, in this file's ``__main__``: it counts the S3 requests it serves
by kind (:func:`request_kind`; :meth:`MotoServer.requests`) and can seed objects straight
into moto's backend (:meth:`MotoServer.seed`). Seeding is for building a large output's
state (50,000 markers) in seconds: moto stores PUTs at a few hundred a second here, ~4 min
for 50,000; the seeded objects are moto's own, listed and read like any PUT one.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

# A planted credential: tests grep every artefact of an S3 run for it.
ACCESS_KEY = "AKIARANK1PLANTED0001"
SECRET_KEY = "rank1-planted-secret-7f3c9e2a41d8b605"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CONTROL = "/_rank1"  # the counting server's own routes (never an S3 path: no such bucket)


class MotoServer:
    """``python -m moto.server`` on 127.0.0.1 and a free port, started and stopped by tests;
    with ``counting``, moto's app behind the counting and seeding middleware (module doc)."""

    def __init__(self, counting: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.counting = counting
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        if self.counting:
            command = [sys.executable, os.path.abspath(__file__), str(self.port)]
        else:
            command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).read()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.url} in {timeout:.0f}s")

    def _control(self, route: str, body: dict[str, object] | None = None) -> dict[str, int]:
        if not self.counting:
            raise RuntimeError("requests are counted only by MotoServer(counting=True)")
        data = None if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(f"{self.url}{CONTROL}/{route}", data, timeout=600) as resp:
            out: dict[str, int] = json.loads(resp.read())
        return out

    def requests(self, reset: bool = False) -> dict[str, int]:
        """``{kind: count}`` of the S3 requests served since the last reset (kinds as
        :func:`request_kind` names them); ``reset`` starts counting afresh."""
        return self._control("requests", {"reset": True} if reset else None)

    def seed(self, bucket: str, objects: dict[str, bytes], chunk: int = 20_000) -> None:
        """Store ``objects`` (``{key: body}``) in ``bucket`` directly in moto's backend."""
        items = list(objects.items())
        for i in range(0, len(items), chunk):
            encoded = {k: base64.b64encode(v).decode() for k, v in items[i : i + chunk]}
            self._control("seed", {"bucket": bucket, "objects": encoded})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment for code under test: the planted credential, no profile, no real AWS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


SLOW_DOWN = (
    503,
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
    b"<Message>Please reduce your request rate.</Message></Error>",
)
INTERNAL = (
    500,
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InternalError</Code>"
    b"<Message>We encountered an internal error. Please try again.</Message></Error>",
)
BAD_REQUEST = (
    400,
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>InvalidRequest</Code>"
    b"<Message>Invalid Request</Message></Error>",
)
DENIED = (
    403,
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
    b"<Message>Access Denied</Message></Error>",
)


# Faults a proxy can inject. Before forwarding: "reset" (drop the connection), "slowdown"
# (503 SlowDown), "internal" (500), "deny" (403), "badrequest" (400). After forwarding, so
# the request took effect at the server and only its answer is lost: "lost" (drop the
# connection instead of answering) and "landed500" (answer 500 instead of the server's).
AFTER_FORWARD = ("lost", "landed500")


def request_kind(method: str, path: str) -> str:
    """The kind of S3 request, as the protocol makes them: put, get, head, delete, list,
    multipart (POST: create/complete upload) or part (PUT of a multipart part)."""
    query = path.partition("?")[2]
    if method == "GET":
        return "list" if "list-type" in query or "prefix=" in query else "get"
    if method == "PUT":
        return "part" if "partNumber=" in query else "put"
    return {"POST": "multipart", "HEAD": "head", "DELETE": "delete"}.get(method, method.lower())


@dataclass
class Rule:
    """A targeted fault: the next ``times`` requests whose method is ``method`` and whose path
    matches ``path`` (a regex searched in the request path) get ``action``."""

    method: str
    path: str
    action: str
    times: int = 1


@dataclass
class FaultPlan:
    """Which requests fail: matching :class:`Rule` s first; then the first ``first`` ones, then
    each with probability ``rate`` (seeded), or every one with ``deny``. Of the random
    failures, a ``resets`` share drops the connection before forwarding and an ``after``
    share is forwarded first and then loses its answer (``AFTER_FORWARD``, half each)."""

    first: int = 0
    rate: float = 0.0
    seed: int = 0
    deny: bool = False
    resets: float = 0.0
    after: float = 0.0
    rules: list[Rule] = field(default_factory=list)
    # Mimic S3-compatible servers: answer a failed If-None-Match with a 412 that does not echo
    # the condition (s3fs then cannot tell it means "exists"), or ignore If-None-Match entirely.
    strip_condition: bool = False
    ignore_if_none_match: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    # (kind, action) -> count, for every request seen: which kinds the faults reached
    by_kind: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._seen = 0

    def decide(self, method: str = "GET", path: str = "/") -> str:
        with self._lock:
            self._seen += 1
            rule = next(
                (
                    r
                    for r in self.rules
                    if r.times > 0 and r.method == method and re.search(r.path, path)
                ),
                None,
            )
            if rule is not None:
                rule.times -= 1
                out = rule.action
            elif self.deny:
                out = "deny"
            elif self._seen <= self.first:
                out = "slowdown"
            elif self._rng.random() < self.rate:
                r = self._rng.random()
                if r < self.resets:
                    out = "reset"
                elif r < self.resets + self.after:
                    out = AFTER_FORWARD[self._rng.random() < 0.5]
                else:
                    out = "slowdown" if self._rng.random() < 0.5 else "internal"
            else:
                out = "pass"
            self.counts[out] = self.counts.get(out, 0) + 1
            key = (request_kind(method, path), out)
            self.by_kind[key] = self.by_kind.get(key, 0) + 1
            return out


class FaultProxy:
    """A threaded HTTP proxy to the moto server that injects faults per :class:`FaultPlan`."""

    def __init__(self, target_port: int, plan: FaultPlan) -> None:
        self.plan = plan
        target = target_port

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
                self.send_response(status)
                length = str(len(body))
                for k, v in headers:
                    if k.lower() == "content-length" and self.command == "HEAD":
                        length = v  # a HEAD answer has no body but the object's length
                    elif k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                action = plan.decide(self.command, self.path)
                if action == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action in ("slowdown", "internal", "deny", "badrequest"):
                    status, err = {
                        "slowdown": SLOW_DOWN,
                        "internal": INTERNAL,
                        "deny": DENIED,
                        "badrequest": BAD_REQUEST,
                    }[action]
                    self._reply(status, err, [("Content-Type", "application/xml")])
                    return
                conn = http.client.HTTPConnection("127.0.0.1", target, timeout=60)
                dropped = {"transfer-encoding"}
                if plan.ignore_if_none_match:
                    dropped.add("if-none-match")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if plan.strip_condition and resp.status == 412:
                    data = re.sub(rb"<Condition>.*?</Condition>", b"", data, flags=re.S)
                if action == "lost":  # the server did it; its answer never arrives
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if action == "landed500":
                    self._reply(*INTERNAL, [("Content-Type", "application/xml")])
                    return
                self._reply(resp.status, data, resp.getheaders())

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Counting:
    """WSGI middleware over moto's app: counts requests by kind; seeds objects (module doc)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = str(environ.get("PATH_INFO", ""))
        if path.startswith(CONTROL + "/"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = json.loads(environ["wsgi.input"].read(length) or b"{}")
            answer = json.dumps(self.control(path[len(CONTROL) + 1 :], body)).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [answer]
        query = str(environ.get("QUERY_STRING", ""))
        kind = request_kind(str(environ["REQUEST_METHOD"]), f"{path}?{query}")
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
        return self.app(environ, start_response)

    def control(self, route: str, body: dict[str, Any]) -> dict[str, int]:
        if route == "requests":
            with self.lock:
                out = dict(self.counts)
                if body.get("reset"):
                    self.counts.clear()
            return out
        if route == "seed":
            from moto.s3.models import s3_backends

            partition, account = s3_backends.bucket_accounts[body["bucket"]]
            backend = s3_backends[account][partition]
            for key, data in body["objects"].items():
                backend.put_object(
                    body["bucket"], key, base64.b64decode(data), disable_notification=True
                )
            return {"seeded": len(body["objects"])}
        raise KeyError(route)


def serve(port: int) -> None:
    """What ``python -m moto.server -H 127.0.0.1 -p PORT`` runs, behind :class:`Counting`."""
    import signal

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", port, Counting(app), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
