"""Instance-metadata emulator: IMDSv2 for the local cloud's nodes (and the agent tests).

It answers each caller by its SOURCE ADDRESS through `lookup(ip) -> InstanceView | None`,
the way the real service answers each instance, so one server on the bridge gateway
serves every node. Tokens are required (401 without) and expire after their TTL.
Spot interruptions and rebalance recommendations are injected per instance.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
MAX_TTL = 21600


@dataclass
class InstanceView:
    """What the metadata service knows about one instance."""
    instance_id: str
    private_ip: str
    instance_type: str = "c6i.large"
    lifecycle: str = "spot"              # spot | on-demand (IMDS says instance-life-cycle)
    availability_zone: str = "us-east-1a"
    region: str = "us-east-1"
    hostname: str = ""                   # default ip-A-B-C-D.ec2.internal
    role: str = ""                       # IAM role name; "" = no instance profile
    image_id: str = "ami-00000000"
    account_id: str = "123456789012"
    tags: dict = field(default_factory=dict)
    user_data: bytes = b""
    credentials: tuple = ()              # (access key id, secret, token) of the role, if any

    @property
    def local_hostname(self) -> str:
        return self.hostname or "ip-" + self.private_ip.replace(".", "-") + ".ec2.internal"


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class BusyHTTPServer(ThreadingHTTPServer):
    """A listen backlog for a whole cluster booting at once: with socketserver's default of
    5, 32 nodes asking together overflowed it, dropped connections waited for the kernel's
    SYN retransmits (1, 3, 7 s ...), and botocore gave up on a node's role credentials."""
    request_queue_size = 1024


class ImdsServer:
    """`ImdsServer(host, port, lookup)`; start() / stop(); `url` ends with '/'. port 0 = any free
    port."""

    def __init__(self, host: str, port: int, lookup: Callable[[str], InstanceView | None]):
        self.lookup = lookup
        self._tokens: dict[str, float] = {}
        self._interruptions: dict[str, dict] = {}
        self._rebalance: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._httpd = BusyHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> ImdsServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="imds", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- fault injection --------------------------------------------------------
    def inject_interruption(self, instance_id: str, action: str = "terminate",
                            at: dt.datetime | None = None) -> None:
        """Serve spot/instance-action for this instance from now on (AWS gives 2 minutes)."""
        at = at or _now() + dt.timedelta(minutes=2)
        with self._lock:
            self._interruptions[instance_id] = {"action": action, "time": _iso(at)}

    def inject_rebalance(self, instance_id: str, at: dt.datetime | None = None) -> None:
        with self._lock:
            self._rebalance[instance_id] = {"noticeTime": _iso(at or _now())}

    def clear(self, instance_id: str) -> None:
        with self._lock:
            self._interruptions.pop(instance_id, None)
            self._rebalance.pop(instance_id, None)

    # -- tokens -----------------------------------------------------------------
    def _new_token(self, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            now = time.monotonic()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + ttl
        return token

    def _token_ok(self, token: str | None) -> bool:
        with self._lock:
            return bool(token) and self._tokens.get(token, 0) > time.monotonic()

    # -- content ----------------------------------------------------------------
    def answer(self, view: InstanceView, path: str):
        """(status, content-type, body) for one GET path under /latest/."""
        meta = {
            "ami-id": view.image_id,
            "instance-id": view.instance_id,
            "instance-type": view.instance_type,
            "instance-life-cycle": view.lifecycle,
            "local-ipv4": view.private_ip,
            "local-hostname": view.local_hostname,
            "hostname": view.local_hostname,
            "placement/availability-zone": view.availability_zone,
            "placement/region": view.region,
        }
        with self._lock:
            if view.instance_id in self._interruptions:
                meta["spot/instance-action"] = json.dumps(self._interruptions[view.instance_id])
            if view.instance_id in self._rebalance:
                meta["events/recommendations/rebalance"] = json.dumps(
                    self._rebalance[view.instance_id]
                )
        if view.role:
            meta["iam/security-credentials/" + view.role] = json.dumps(_credentials(view))
            meta["iam/info"] = json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": _iso(_now()),
                    "InstanceProfileArn":
                        f"arn:aws:iam::{view.account_id}:instance-profile/{view.role}",
                    "InstanceProfileId": "AIPA" + view.instance_id[2:].upper(),
                }
            )
        for key, value in view.tags.items():
            meta["tags/instance/" + key] = str(value)

        if path == "user-data":
            return (
                (200, "application/octet-stream", view.user_data)
                if view.user_data
                else (404, "", b"")
            )
        if path == "dynamic/instance-identity/document":
            return 200, "application/json", json.dumps({
                "accountId": view.account_id, "architecture": "x86_64",
                "availabilityZone": view.availability_zone, "imageId": view.image_id,
                "instanceId": view.instance_id, "instanceType": view.instance_type,
                "privateIp": view.private_ip, "region": view.region, "version": "2017-09-30",
                "pendingTime": _iso(_now())}, indent=2).encode()
        if not path.startswith("meta-data/") and path != "meta-data":
            return 404, "", b""
        key = path[len("meta-data/"):]
        if key in meta:
            return 200, "text/plain", meta[key].encode()
        # a directory: list its children, sub-directories with a trailing '/'
        prefix = key if key == "" or key.endswith("/") else key + "/"
        children = sorted({k[len(prefix):].split("/")[0] + ("/" if "/" in k[len(prefix):] else "")
                           for k in meta if k.startswith(prefix)})
        if not children:
            return 404, "", b""
        return 200, "text/plain", "\n".join(children).encode()


def _credentials(view: InstanceView) -> dict:
    """The instance's role credentials in the real shape: the daemon issues them per
    instance (credentials.py), and the enforcing control plane accepts only those. An
    emulator without issued credentials (its own unit tests) serves dummy ones."""
    now = _now()
    akid, secret, token = view.credentials or ("ASIALOCALCLOUD00000", "local-cloud-dummy-secret",
                                               "local-cloud-dummy-session-token")
    return {
        "Code": "Success",
        "LastUpdated": _iso(now),
        "Type": "AWS-HMAC",
        "AccessKeyId": akid,
        "SecretAccessKey": secret,
        "Token": token,
        "Expiration": _iso(now + dt.timedelta(hours=6)),
    }


def _handler_for(server: ImdsServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "EC2ws"

        def log_message(self, *args):  # quiet: the emulator is polled every few seconds
            pass

        def _send(self, status: int, body: bytes = b"", ctype: str = "text/plain", extra=None):
            self.send_response(status)
            self.send_header("Content-Type", ctype or "text/plain")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_PUT(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.rstrip("/") != "/latest/api/token":
                return self._send(404)
            try:
                ttl = int(self.headers.get(TOKEN_TTL_HEADER, ""))
            except ValueError:
                return self._send(400)
            if not 1 <= ttl <= MAX_TTL:
                return self._send(400)
            token = server._new_token(ttl)
            self._send(200, token.encode(), extra={TOKEN_TTL_HEADER: str(ttl)})

        def do_GET(self):
            if not server._token_ok(self.headers.get(TOKEN_HEADER)):
                return self._send(401)
            view = server.lookup(self.client_address[0])
            if view is None or not self.path.startswith("/latest/"):
                return self._send(404)
            status, ctype, body = server.answer(view, self.path[len("/latest/"):].split("?")[0])
            self._send(status, body, ctype)

    return Handler
