"""IMDSv2 client for the agent (stdlib only: it runs before anything else is trusted).

The endpoint comes from AWS_EC2_METADATA_SERVICE_ENDPOINT (the local cloud's emulator)
or else the standard link-local address, which is only ever right on a real instance.
Every call is bounded: short timeouts, a few retries, and a token refreshed before it
expires (or after a 401).
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

DEFAULT_ENDPOINT = "http://169.254.169.254/"   # real EC2 only; tests and benchmarks never use it
TOKEN_TTL = 21600


class ImdsError(RuntimeError):
    pass


def endpoint_from_env() -> str:
    endpoint = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or DEFAULT_ENDPOINT
    if (
        endpoint == DEFAULT_ENDPOINT
        and os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"
    ):
        raise ImdsError("the metadata service is disabled here (AWS_EC2_METADATA_DISABLED=true) "
                        "and no AWS_EC2_METADATA_SERVICE_ENDPOINT is set")
    return endpoint if endpoint.endswith("/") else endpoint + "/"


class Imds:
    """get(path) -> str, or None when the service says 404 (e.g. no spot notice)."""

    def __init__(self, endpoint: str | None = None, timeout: float = 2.0, retries: int = 3,
                 ttl: int = TOKEN_TTL):
        self.endpoint = (endpoint.rstrip("/") + "/") if endpoint else endpoint_from_env()
        self.timeout, self.retries, self.ttl = timeout, retries, ttl
        self._token: str | None = None
        self._token_expires = 0.0

    def _open(self, req: urllib.request.Request):
        """One request with bounded retries on network errors and 5xx; HTTPError 4xx passes
        through."""
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.status, resp.read()
            except urllib.error.HTTPError as err:
                if err.code < 500 or attempt == self.retries:
                    return err.code, b""
            except (urllib.error.URLError, OSError) as err:
                if attempt == self.retries:
                    raise ImdsError(
                        f"metadata service {self.endpoint} unreachable: {err}"
                    ) from None
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def token(self, refresh: bool = False) -> str:
        if refresh or not self._token or time.monotonic() > self._token_expires:
            req = urllib.request.Request(
                self.endpoint + "latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.ttl)},
            )
            status, body = self._open(req)
            if status != 200:
                raise ImdsError(f"metadata token request failed with HTTP {status}")
            self._token = body.decode()
            self._token_expires = time.monotonic() + max(1.0, self.ttl - 60)
        return self._token

    def get(self, path: str) -> str | None:
        """GET latest/PATH (e.g. 'meta-data/instance-id'); None on 404."""
        for attempt in range(2):
            req = urllib.request.Request(
                self.endpoint + "latest/" + path.lstrip("/"),
                headers={"X-aws-ec2-metadata-token": self.token(refresh=attempt > 0)},
            )
            status, body = self._open(req)
            if status == 200:
                return body.decode()
            if status == 404:
                return None
            if status != 401:
                break
        raise ImdsError(f"metadata GET {path} failed with HTTP {status}")

    def meta(self, key: str) -> str:
        """A meta-data value that must exist."""
        value = self.get("meta-data/" + key)
        if value is None:
            raise ImdsError(f"metadata has no {key}")
        return value.strip()

    def json(self, path: str) -> dict | None:
        value = self.get(path)
        return json.loads(value) if value else None

    def interruption(self) -> dict | None:
        """The spot instance-action notice, if any."""
        return self.json("meta-data/spot/instance-action")

    def rebalance(self) -> dict | None:
        return self.json("meta-data/events/recommendations/rebalance")
