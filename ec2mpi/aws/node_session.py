"""The session a node's agent talks to AWS with.

A booting node needs two services: DynamoDB (the registry) and one S3 GetObject (the key
bundle). Here they are spoken directly, SigV4-signed over a kept-alive HTTP connection with
the standard library: boto3 and botocore cost a node ~0.3 CPU-s to import and to build two
clients (their service models), as much as the rest of its boot, and with 64 nodes booting
on one machine that CPU is the boot time. Anything else (EC2 for the master's healing, STS
for job credentials, which only some nodes use and only after boot) goes through a full
AwsSession, made on first use.

Credentials are the instance role's, from the metadata service (IMDSv2) and fetched again
before they expire, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN when set
(benchmarks and tests). Retries follow botocore's standard mode: connection errors, 5xx and
throttling, up to 10 attempts with full-jitter exponential backoff (at most 20 s).
"""
from __future__ import annotations

import calendar
import hashlib
import http.client
import io
import json
import os
import random
import re
import ssl
import threading
import time
from typing import Callable
from urllib.parse import quote, urlsplit

from .. import __version__
from .sigv4 import EMPTY_SHA256, Credentials, sign

MAX_ATTEMPTS = 10
MAX_BACKOFF = 20.0
CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 60.0
REFRESH_BEFORE = 600.0   # s before expiry that role credentials are fetched again
THROTTLING = frozenset((
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "RequestTimeout", "RequestTimeoutException"))
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
DDB_TARGET = "DynamoDB_20120810."
SERVED = ("dynamodb", "s3")


def env_credentials() -> Credentials | None:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        return Credentials(key, secret, os.environ.get("AWS_SESSION_TOKEN", ""))
    return None


def _expiry(text: str | None) -> float:
    """IMDS's Expiration (2026-11-26T23:59:59Z) as time.time()."""
    if not text:
        return 0.0
    return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))


class RoleCredentials:
    """The instance role's keys from the metadata service; None while there are none (a
    new instance profile can take a while to show up)."""

    def __init__(self, imds=None):
        self._imds = imds
        self._creds: Credentials | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Credentials | None:
        with self._lock:
            now = time.time()
            if self._creds is None or (self._creds.expires
                                       and now > self._creds.expires - REFRESH_BEFORE):
                fresh = self._fetch()
                if fresh is not None:
                    self._creds = fresh
                elif self._creds is not None and now >= self._creds.expires:
                    self._creds = None
            return self._creds

    def _fetch(self) -> Credentials | None:
        from ..agent.imds import Imds, ImdsError
        try:
            self._imds = self._imds or Imds()
            roles = (self._imds.get("meta-data/iam/security-credentials/") or "").split()
            data = self._imds.json("meta-data/iam/security-credentials/" + roles[0]) \
                if roles else None
        except (ImdsError, ValueError):
            return None
        if not data or data.get("Code", "Success") != "Success":
            return None
        return Credentials(data["AccessKeyId"], data["SecretAccessKey"], data.get("Token", ""),
                           _expiry(data.get("Expiration")))


def client_error(status: int, code: str, message: str, operation: str, extra: dict):
    """botocore's ClientError, shaped as botocore parses an error response, so that callers
    handle both sessions' errors the same way."""
    from botocore.exceptions import ClientError
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}, **extra}, operation)


class _Client:
    """One service at one endpoint: signs, sends on this thread's kept-alive connection,
    retries. Subclasses speak the service's protocol."""
    service = ""

    def __init__(self, endpoint: str, region: str, credentials: Callable, tls: Callable,
                 notify: Callable[[str, str], None], failed: Callable[[str, str], None]):
        parts = urlsplit(endpoint)
        self.scheme, self.hostname = parts.scheme, parts.hostname or ""
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.region, self._credentials, self._notify = region, credentials, notify
        self._failed = failed
        self._ssl = tls() if self.scheme == "https" else None
        self._local = threading.local()

    def _host(self, hostname: str) -> str:
        default = 443 if self.scheme == "https" else 80
        return hostname if self.port == default else f"{hostname}:{self.port}"

    def _connection(self, hostname: str):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.host != hostname:
            if conn is not None:
                conn.close()
            if self._ssl is not None:
                conn = http.client.HTTPSConnection(hostname, self.port, timeout=CONNECT_TIMEOUT,
                                                   context=self._ssl)
            else:
                conn = http.client.HTTPConnection(hostname, self.port, timeout=CONNECT_TIMEOUT)
            conn.connect()
            conn.sock.settimeout(READ_TIMEOUT)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _send(self, operation: str, method: str, hostname: str, path: str, headers: dict,
              body: bytes = b"") -> tuple[int, bytes]:
        """(status, body) of a response that is not worth retrying (or of the last try)."""
        self._notify(self.service, operation)
        payload_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        if self.service == "s3":
            headers = {**headers, "X-Amz-Content-SHA256": payload_hash}
        for attempt in range(1, MAX_ATTEMPTS + 1):
            creds = self._credentials()
            if creds is None:
                from botocore.exceptions import NoCredentialsError
                raise NoCredentialsError()
            signed = sign(method, self._host(hostname), self.base_path + path, headers,
                          payload_hash, creds, self.region, self.service,
                          time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
            signed["User-Agent"] = f"ec2mpi-agent/{__version__}"
            reused = getattr(self._local, "conn", None) is not None
            try:
                conn = self._connection(hostname)
                conn.request(method, self.base_path + path, body=body or None, headers=signed)
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self._drop_connection()
            except (OSError, http.client.HTTPException) as err:
                self._drop_connection()
                self._failed(self.service, type(err).__name__)
                if attempt == MAX_ATTEMPTS:
                    from botocore.exceptions import EndpointConnectionError
                    raise EndpointConnectionError(
                        endpoint_url=f"{self.scheme}://{self._host(hostname)}",
                        error=err) from err
                if reused and isinstance(err, STALE):
                    continue    # the server closed a kept-alive connection: try a new one now
            else:
                code = self._code(resp.status, data)
                if code:
                    self._failed(self.service, code)
                if resp.status < 500 and code not in THROTTLING:
                    return resp.status, data
                if attempt == MAX_ATTEMPTS:
                    return resp.status, data
            time.sleep(random.random() * min(MAX_BACKOFF, 2.0 ** (attempt - 1)))
        raise AssertionError("unreachable")

    def _code(self, status: int, data: bytes) -> str:
        raise NotImplementedError


class DynamoDBClient(_Client):
    """DynamoDB's JSON protocol: any operation as a method (get_item, put_item, query, ...),
    taking and returning what boto3's low-level client does, attribute values typed."""
    service = "dynamodb"

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        operation = "".join(part.capitalize() for part in name.split("_"))
        return lambda **params: self._call(operation, params)

    def _call(self, operation: str, params: dict) -> dict:
        status, data = self._send(
            operation, "POST", self.hostname, "/",
            {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": DDB_TARGET + operation},
            json.dumps(params).encode())
        try:
            body = json.loads(data or b"{}")
        except ValueError:     # not DynamoDB's answer (a proxy's error page)
            body = {"message": data[:200].decode("utf-8", "replace")}
        if status < 300:
            return body
        extra = {k: v for k, v in body.items() if k not in ("__type", "message", "Message")}
        raise client_error(status, self._code(status, data),
                           body.get("message") or body.get("Message") or "", operation, extra)

    def _code(self, status: int, data: bytes) -> str:
        if status < 300:
            return ""
        try:
            return str(json.loads(data).get("__type", "")).rsplit("#", 1)[-1] or str(status)
        except (ValueError, AttributeError):
            return str(status)


class S3Client(_Client):
    """S3's GetObject only: the one S3 call a node makes itself (s3fs does the rest)."""
    service = "s3"

    def __init__(self, *args, path_style: bool, dns_suffix: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_style, self.dns_suffix = path_style, dns_suffix

    def get_object(self, Bucket: str, Key: str, ExpectedBucketOwner: str | None = None) -> dict:
        headers = {"X-Amz-Expected-Bucket-Owner": ExpectedBucketOwner} \
            if ExpectedBucketOwner else {}
        key = quote(Key, safe="/~")
        if self.path_style:
            hostname, path = self.hostname, f"/{Bucket}/{key}"
        else:
            hostname, path = f"{Bucket}.s3.{self.region}.{self.dns_suffix}", f"/{key}"
        status, data = self._send("GetObject", "GET", hostname, path, headers)
        if status < 300:
            return {"Body": io.BytesIO(data), "ContentLength": len(data),
                    "ResponseMetadata": {"HTTPStatusCode": status}}
        message = re.search(rb"<Message>(.*?)</Message>", data)
        raise client_error(status, self._code(status, data),
                           message.group(1).decode() if message else "", "GetObject", {})

    def _code(self, status: int, data: bytes) -> str:
        if status < 300:
            return ""
        found = re.search(rb"<Code>(.*?)</Code>", data)
        return found.group(1).decode() if found else str(status)


class NodeSession:
    """An agent's AwsSession: the same client()/region/on_call surface, DynamoDB and S3
    GetObject served here, every other service by a full AwsSession made on first use."""

    def __init__(self, region: str, endpoint_url: str | None = None,
                 ca_bundle: str | None = None, credentials: dict | None = None, imds=None):
        self._region, self.endpoint_url, self.ca_bundle = region, endpoint_url, ca_bundle
        self._given = credentials
        if credentials:
            fixed = Credentials(credentials["aws_access_key_id"],
                                credentials["aws_secret_access_key"],
                                credentials.get("aws_session_token") or "")
            self._credentials: Callable = lambda: fixed
        else:
            fixed = env_credentials()
            self._credentials = (lambda: fixed) if fixed else RoleCredentials(imds)
        self._clients: dict = {}
        self._full = None
        self._tls_context: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, str], None]] = []
        self._failure_listeners: list[Callable[[str, str], None]] = []

    @property
    def region(self) -> str:
        return self._region

    def credentials(self):
        """The keys requests are signed with now (None while the role has none)."""
        return self._credentials()

    def has_credentials(self) -> bool:
        return self.credentials() is not None

    def client(self, service: str, max_attempts: int | None = None):
        if service not in SERVED or max_attempts is not None:
            return self.full_session().client(service, max_attempts)
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self._make(service)
            return self._clients[service]

    def _make(self, service: str):
        suffix = "amazonaws.com.cn" if self._region.startswith("cn-") else "amazonaws.com"
        endpoint = self.endpoint_url or f"https://{service}.{self._region}.{suffix}"
        args = (endpoint, self._region, self._credentials, self._tls, self._notify,
                self._attempt_failed)
        if service == "s3":
            return S3Client(*args, path_style=bool(self.endpoint_url), dns_suffix=suffix)
        return DynamoDBClient(*args)

    def _tls(self) -> ssl.SSLContext:
        """One TLS context for both clients: loading the system's CA bundle costs ~50 ms."""
        if self._tls_context is None:
            self._tls_context = ssl.create_default_context(cafile=self.ca_bundle)
        return self._tls_context

    def full_session(self):
        """A boto3-backed AwsSession with the same region, endpoint and credentials."""
        with self._lock:
            if self._full is None:
                from .session import AwsSession
                self._full = AwsSession(region=self._region, endpoint_url=self.endpoint_url,
                                        ca_bundle=self.ca_bundle, credentials=self._given)
                self._full.on_call(self._notify)
            return self._full

    def account_id(self) -> str:
        return self.full_session().account_id()

    def on_call(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        """Call listener(service, operation) before every API call; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_failed_attempt(self, listener: Callable[[str, str], None]) -> None:
        """Call listener(service, error code) for each HTTP attempt of DynamoDB or S3 that
        failed (retried or not): what the benchmarks count."""
        self._failure_listeners.append(listener)

    def _notify(self, service: str, operation: str) -> None:
        for listener in list(self._listeners):
            listener(service, operation)

    def _attempt_failed(self, service: str, code: str) -> None:
        for listener in list(self._failure_listeners):
            listener(service, code)
