"""Job role credentials for the cluster user, served on loopback as ECS serves a task role.

The node role's credentials are root's alone (user-data firewalls the metadata service).
When the cluster has a job role (create --job-policy-arn), the agent assumes it with the
node role and answers on 127.0.0.1:PORT/job-credentials, only to callers presenting the
token in TOKEN_FILE (readable by root and the cluster user's group). boto3, the AWS CLI and
every SDK find it through AWS_CONTAINER_CREDENTIALS_FULL_URI and
AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE, which the MPI environment block exports when the
token file exists (boot.mpi_env_block). Without a job role nothing listens: jobs get no
AWS credentials at all.
"""
from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import os
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PORT = 51679                 # loopback only; each node (and local node) has its own
PATH = "/job-credentials"
TOKEN_NAME = "job-token"
REFRESH_BEFORE = 15 * 60     # seconds before expiry when a new session is assumed
log = logging.getLogger("ec2mpi.agent.jobcreds")


def env_lines(run_dir: Path) -> list[str]:
    """Shell lines for the MPI environment block: the SDKs' container-credentials settings,
    only where the agent serves them (the token file exists)."""
    token = run_dir / TOKEN_NAME
    return [(f'if [ -r {token} ]; then export AWS_CONTAINER_CREDENTIALS_FULL_URI='
            f'http://127.0.0.1:{PORT}{PATH} AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={token}; fi')]


class JobCredentials:
    """Assume the job role (cached until REFRESH_BEFORE its expiry) and serve it."""

    def __init__(self, session, role_arn: str, session_name: str, run_dir: Path, gid: int):
        self.session = session     # STS (boto3) only when a job first asks: not while booting
        self.role_arn, self.session_name = role_arn, session_name[:64]
        self.token_path = Path(run_dir) / TOKEN_NAME
        self.gid = gid
        self._lock = threading.Lock()
        self._cached: dict | None = None
        self._server: ThreadingHTTPServer | None = None

    def credentials(self) -> dict:
        with self._lock:
            now = dt.datetime.now(dt.timezone.utc)
            if self._cached is None or (self._cached["Expiration"] - now).total_seconds() \
                    < REFRESH_BEFORE:
                self._cached = self.session.client("sts").assume_role(
                    RoleArn=self.role_arn, RoleSessionName=self.session_name,
                    DurationSeconds=3600)["Credentials"]
            creds = self._cached
        return {"AccessKeyId": creds["AccessKeyId"], "SecretAccessKey": creds["SecretAccessKey"],
                "Token": creds["SessionToken"],
                "Expiration": creds["Expiration"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                "RoleArn": self.role_arn}

    def start(self) -> JobCredentials:
        token = secrets.token_urlsafe(32)
        self.token_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.token_path.with_name(f".{TOKEN_NAME}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
        try:
            os.fchown(fd, 0, self.gid)
            os.write(fd, token.encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.token_path)
        self._server = ThreadingHTTPServer(("127.0.0.1", PORT), _handler(self, token))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="jobcreds", daemon=True).start()
        log.info("job role %s served on 127.0.0.1:%d%s", self.role_arn, PORT, PATH)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.token_path.unlink(missing_ok=True)


def _handler(owner: JobCredentials, token: str):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):   # SDKs poll it; the agent log is not for that
            pass

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                self._send(403, {"code": "Forbidden", "message": "wrong or missing token"})
            elif self.path.split("?")[0] != PATH:
                self._send(404, {"code": "NotFound", "message": self.path})
            else:
                try:
                    self._send(200, owner.credentials())
                except Exception as err:  # noqa: BLE001 - the SDK reports it to the job
                    log.warning("job role: %s", err)
                    self._send(500, {"code": "AssumeRoleFailed", "message": str(err)})
    return Handler
