"""The one boto3 session factory. Nothing else in ec2mpi creates boto3 clients.

It honours the standard AWS environment and files (AWS_PROFILE, AWS_REGION /
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL, AWS_CA_BUNDLE, shared config and credentials),
uses adaptive retries, and lets callers observe every API call (for -v and for the
API-call counts of the benchmarks).
"""
from __future__ import annotations

import threading
from typing import Callable

import botocore.exceptions  # not boto3: the agent's node session needs only the error types

from ..errors import UserError, explain_client_error

ClientError = botocore.exceptions.ClientError
BotoCoreError = botocore.exceptions.BotoCoreError

_RETRIES = {"mode": "adaptive", "max_attempts": 10}
MUTATING_PREFIXES = (
    "Create",
    "Put",
    "Run",
    "Delete",
    "Update",
    "Attach",
    "Detach",
    "Authorize",
    "Revoke",
    "Add",
    "Remove",
    "Tag",
    "Untag",
    "Terminate",
    "Modify",
    "TransactWrite",
    "BatchWrite",
    "Request",
    "Cancel",
    "Associate",
    "Disassociate",
    "Pass",
)


def error_code(err: ClientError) -> str:
    """The AWS error code of a ClientError ('' if it has none)."""
    return err.response.get("Error", {}).get("Code", "")


def is_mutating(operation: str) -> bool:
    return operation.startswith(MUTATING_PREFIXES)


class AwsSession:
    """A boto3 session plus cached clients, one per service.

    `endpoint_url` and `ca_bundle` are only for emulators (the local cloud); against AWS
    they stay None and boto3's own resolution (including AWS_ENDPOINT_URL) applies.
    """

    def __init__(self, profile: str | None = None, region: str | None = None,
                 endpoint_url: str | None = None, ca_bundle: str | None = None,
                 credentials: dict | None = None):
        import boto3

        try:
            self._session = boto3.Session(
                profile_name=profile, region_name=region, **(credentials or {})
            )
        except botocore.exceptions.ProfileNotFound:
            raise UserError(
                f"AWS profile {profile!r} not found",
                "check ~/.aws/config or drop --profile / AWS_PROFILE",
            ) from None
        self.endpoint_url = endpoint_url
        self.ca_bundle = ca_bundle
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, str], None]] = []
        self._account: str | None = None

    # -- identity ---------------------------------------------------------------
    @property
    def region(self) -> str:
        region = self._session.region_name
        if not region:
            raise UserError("no AWS region configured",
                            "pass --region, set AWS_REGION, or set a region in ~/.aws/config")
        known = set(self._session.get_available_regions("ec2"))
        if known and region not in known and not self.endpoint_url:
            raise UserError(
                f"unknown AWS region {region!r}", "use a region such as us-east-1 or eu-west-1"
            )
        return region

    def has_credentials(self) -> bool:
        return self._session.get_credentials() is not None

    def check_credentials(self) -> None:
        """Fail early and plainly, before anything is created."""
        if not self.has_credentials():
            raise UserError(
                "no AWS credentials found",
                "set AWS_PROFILE or run 'aws configure' (or try the local cloud with --local)",
            )

    def account_id(self) -> str:
        if self._account is None:
            self.check_credentials()
            try:
                self._account = self.client("sts").get_caller_identity()["Account"]
            except ClientError as err:
                raise explain_client_error("sts:GetCallerIdentity", err) from err
        return self._account

    # -- clients ----------------------------------------------------------------
    def client(self, service: str, max_attempts: int | None = None):
        """The cached client for `service`; `max_attempts` gives a separate client with fewer
        retries, for optional calls (pricing, placement groups) that an emulator answers with
        500."""
        with self._lock:
            key = service if max_attempts is None else f"{service}#{max_attempts}"
            client = self._clients.get(key)
            if client is None:
                retries = (
                    _RETRIES
                    if max_attempts is None
                    else {"mode": "standard", "total_max_attempts": max_attempts}
                )
                from botocore.config import Config

                kwargs = {"config": Config(retries=retries, connect_timeout=10, read_timeout=60)}
                if self.endpoint_url:
                    kwargs["endpoint_url"] = self.endpoint_url
                if self.ca_bundle:
                    kwargs["verify"] = self.ca_bundle
                # region is validated lazily: STS/IAM are global, but we still pin the region
                client = self._session.client(
                    service, region_name=self._session.region_name or None, **kwargs
                )
                client.meta.events.register("before-call.*.*", self._before_call)
                self._clients[key] = client
            return client

    def on_call(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        """Call listener(service, operation) before every API call; returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _before_call(self, model=None, **_):
        service = model.service_model.service_name if model else "?"
        for listener in list(self._listeners):
            listener(service, model.name if model else "?")


class CallCounter:
    """Counts API calls by operation; `mutating` is the number that create or change things."""

    def __init__(self, session: AwsSession):
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = session.on_call(self._record)

    def _record(self, service: str, operation: str) -> None:
        with self._lock:
            key = f"{service}:{operation}"
            self.calls[key] = self.calls.get(key, 0) + 1

    @property
    def mutating(self) -> int:
        return sum(n for k, n in self.calls.items() if is_mutating(k.split(":", 1)[1]))

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def close(self) -> None:
        self._stop()
