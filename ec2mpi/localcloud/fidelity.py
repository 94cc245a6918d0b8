"""Fidelity patches for moto 5.x, applied ONLY inside the local cloud's control-plane process.

moto is our emulator of the AWS control plane. Where it is less strict than AWS in a way
our security model depends on, we make the emulator faithful here instead of weakening
what the product applies on AWS. Nothing outside `ec2mpi.localcloud.controlplane` may
import this module: `apply()` monkeypatches moto process-wide.

What is patched, and why (moto 5.2.1 source references):

1. Policy conditions (moto/iam/access_control.py IAMPolicyStatement,
   moto/iam/policy_conditions.py):
   - moto knows only `StringEquals` and treats any other operator as "condition met".
     So the standard TLS-only deny, `"Bool": {"aws:SecureTransport": "false"}`, denied
     every request, even over TLS. We evaluate conditions with AWS semantics for Bool,
     Null, String(Not)Equals(IgnoreCase), String(Not)Like and the `...IfExists` suffix:
     keys AND together, a key's values OR together, a key missing from the request
     context fails a positive operator and satisfies a negated one. Operators we do not
     implement keep moto's behaviour (ignored, i.e. treated as met), so nothing that
     worked before changes.
   - moto returns DENIED for any statement whose condition does not match, even an Allow
     statement or a Deny that does not apply. On AWS such a statement simply does not
     apply: NEUTRAL. Fixed.

2. Request context for S3 bucket policies (moto/s3/models.py FakeBucket.get_permission,
   moto/s3/responses.py):
   - `get_permission` evaluated the bucket policy without any request context. It now
     passes `aws:SecureTransport` ("true"/"false"), which `RequestContextMiddleware`
     records per request from the listener the request arrived on (HTTPS or HTTP).
   - moto consulted bucket policies only for object requests through `_key_response`
     (GET/PUT/DELETE/HEAD/POST Object) and per key in DeleteObjects. Bucket-level requests
     (ListObjects(V2), Get/PutBucketPolicy, ...) ignored them. Every S3 request passes
     through `_authenticate_and_authorize_s3_action` with the IAM action name already
     set in `self.data["Action"]`; we add the bucket-policy check there, so a DENIED
     result raises AccessDenied for bucket-level and object-level requests alike
     (DeleteObjects turns it into a per-key AccessDenied error, as moto does for IAM).
   - `_key_response` answered a bucket-policy denial with a bare 403 and no body; boto3
     then reports the error code "403". We answer with the S3 `AccessDenied` error
     document like AWS does (HEAD responses stay bodiless, as on AWS).
   Not emulated: the account root's right to delete a bucket policy it locked itself out
   with, and copy-source authorization.

3. DynamoDB concurrency (fidelity_dynamodb.py; moto/dynamodb/responses.py DynamoHandler,
   moto/dynamodb/models/__init__.py transact_write_items):
   - AWS: single-item writes (conditions, ADD) are atomic per item; TransactWriteItems is
     atomic across its items; a transaction that meets an item another request is writing
     is cancelled (TransactionCanceledException, CancellationReasons `TransactionConflict`
     at that item, `None` elsewhere; botocore does not retry it); requests on different
     items run in parallel. TransactWriteItems is idempotent for 10 minutes per
     ClientRequestToken (botocore fills one in and keeps it across retries).
   - moto: plain dicts under a threaded server, no locking at all; a transaction deep-copies
     every table it touches and, on failure, swaps the copies back in (losing any write
     made meanwhile); a retried transaction was applied twice (seen under load: a read
     timeout, a retry, an epoch bumped by 2). We used to run every DynamoDB request under
     one lock, which hid transaction conflicts the product must handle on AWS.
   - Now: per-item locks keyed by (account, region, table, key values), with the key schema
     read from moto's backend. PutItem/UpdateItem/DeleteItem/BatchWriteItem wait for their
     items (bounded: after 30 s they answer TransactionConflictException, as AWS answers a
     write that meets an ongoing transaction at once); TransactWriteItems takes all its
     items or none, never waits, and is cancelled as on AWS if one is held;
     TransactGetItems is cancelled while a write holds one of its items. Reads take no item
     lock. One short backend lock covers only moto's in-memory call (the request body is
     already read, the response not yet written), so a slow client or a held item never
     blocks other items longer than that. A repeated ClientRequestToken replays the first
     success, answers TransactionInProgressException (retried by botocore) while the first
     is running, and IdempotentParameterMismatchException for a different request.
   - TEST-ONLY hook: header `x-ec2mpi-test-hold-item-locks: SECONDS` (<= 10) makes a write
     keep its item locks that long before it runs; `GET /_ec2mpi/dynamodb/item-locks`
     (item 7) lists held locks. Tests use them to race requests deterministically.
   Not emulated: PartiQL (ExecuteStatement/ExecuteTransaction) takes no item lock, and
   TransactGetItems does not make a concurrent write conflict.

4. EC2 Fleet instance profiles (moto/ec2/models/fleets.py Fleet.create_*_requests): moto
   reads `IamInstanceProfile` from the launch template but never gives it to the
   instances it launches, so nodes had no role and no credentials. AWS attaches the
   template's profile to every instance; we associate it after each fleet launch.
   Applied by `backend_app_factory` when the EC2 app is first built (lazily, see there).

5. S3 ExpectedBucketOwner (moto/s3/responses.py): AWS answers 403 AccessDenied when the
   `x-amz-expected-bucket-owner` header (boto3 `ExpectedBucketOwner=`) names an account
   other than the bucket owner's, and likewise for `x-amz-source-expected-bucket-owner`
   and the copy source. moto ignores both headers and even serves another account's bucket
   (its cross-account lookup). We check both in `_authenticate_and_authorize_s3_action`,
   which every bucket- and object-level request passes; the owner is the account that
   created the bucket (moto maps a request to an account by the `x-moto-account-id`
   header, else by the access key: keys from STS AssumeRole belong to the role's account,
   any other key to 123456789012).

6. EC2 capacity pools (fidelity_capacity.py; moto/ec2/models/fleets.py
   Fleet.get_launch_spec_counts, moto/ec2/models/instances.py run_instances/terminate):
   - AWS: an instant CreateFleet launches what capacity allows across its overrides and
     lists one `Errors` entry (ErrorCode InsufficientInstanceCapacity, Lifecycle,
     LaunchTemplateAndOverrides naming the type and subnet/AZ) per pool that ran short;
     RunInstances fails with InsufficientInstanceCapacity (a server error, HTTP 500) when
     its pool is exhausted.
   - moto: unlimited capacity; a fleet puts all its capacity on the cheapest (in practice
     the first) override, or round-robin for `diversified`.
   - Now: a table pool (type, AZ or *, lifecycle or *) -> remaining instances, unlimited
     unless set (so nothing changes by default). Fleets fill overrides in preference order
     (Priority, then MaxPrice, then as given; round-robin for `diversified`) from what the
     pools hold, and list an Errors entry per (type, AZ, lifecycle) that ran short;
     RunInstances (and every other launch, fleets' included) takes capacity per instance or
     fails with InsufficientInstanceCapacity, AWS's wording, HTTP 500; terminating an
     instance gives its unit back. Pools are set through item 7.
   Not emulated: RequestSpotInstances/RequestSpotFleet fail with InsufficientInstanceCapacity
   instead of staying open; stopping an instance keeps its capacity.

7. Control endpoints (`control_endpoint`): paths under `/_ec2mpi/` on the control plane's
   own listeners never reach moto (no S3 bucket name can start with `_`, so none is
   shadowed) and answer only clients on this host (loopback, or the listener's own
   address: not nodes). `GET|POST|DELETE /_ec2mpi/capacity` reads, sets
   (`{"type", "az", "lifecycle", "count"}`, null = any / unlimited) and resets the pools
   (see fidelity_capacity.py); `GET /_ec2mpi/dynamodb/item-locks` lists held item locks;
   `GET /_ec2mpi/ec2/live-instances?region=R` maps the ids of the pending and running
   instances to their state (the node runner's poll: a hypervisor does not read EC2's API).

8. GetConsoleOutput (moto/ec2/responses/general.py): moto answers every instance with one
   fixed sample kernel log, so `ec2mpi logs --console` and the boot-failure check of
   `create` saw nothing of a node's boot. With `serve --consoles NODES` (the local cloud
   passes its nodes directory) it answers the last 64 KiB of NODES/ID/console.log, where
   the node's user-data writes, and no Output before the node started, as EC2 does.

9. EC2 requests are atomic (`_one_request_at_a_time`): moto lists a fleet's reservation
   before it has made the instances, and gives them their tags and instance profile (item
   4) after; under the threaded server a DescribeInstances in between saw instances
   without a profile or tags. The local cloud's node runner, which describes an instance
   once when it shows up, then started nodes with no role (no credentials: their boot
   failed after 2 minutes) or the wrong image. EC2 shows an instance whole from the start;
   here EC2 requests run one at a time (they are few; DynamoDB and S3 stay parallel).
"""
from __future__ import annotations

import contextvars
import ipaddress
import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

log = logging.getLogger(__name__)

# Per-request context: set by the middleware, read by the patched moto code.
_request_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "ec2mpi_request_context", default=None)

_applied = False
CONTROL_PREFIX = "/_ec2mpi/"  # the control plane's own endpoints (item 7), never moto's


def request_context() -> dict[str, str]:
    """The condition keys of the request being served (empty outside a request)."""
    return dict(_request_context.get() or {})


class RequestContextMiddleware:
    """WSGI middleware: one instance per listener, records whether requests arrived over TLS.

    The flag comes from the listener (the HTTPS or the HTTP server), not from anything the
    client sends, so it cannot be spoofed with headers such as X-Forwarded-Proto. Paths under
    CONTROL_PREFIX are the control plane's own endpoints and never reach moto.
    """

    def __init__(self, app: Callable, *, secure: bool):
        self.app, self.secure = app, secure

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(CONTROL_PREFIX):
            return control_endpoint(environ, start_response)
        token = _request_context.set({"aws:SecureTransport": "true" if self.secure else "false"})
        try:
            return self.app(environ, start_response)
        finally:
            _request_context.reset(token)


def _from_this_host(environ: dict[str, Any]) -> bool:
    """Loopback, or the listener's own address (the local cloud's bridge side on this host);
    not a node, whose address is another one on the bridge."""
    try:
        remote = ipaddress.ip_address(environ.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    remote = getattr(remote, "ipv4_mapped", None) or remote
    if remote.is_loopback:
        return True
    try:
        return remote == ipaddress.ip_address(environ.get("SERVER_NAME", "").strip("[]"))
    except ValueError:
        return False


def control_endpoint(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
    """The control plane's own endpoints (item 7): capacity pools, and the DynamoDB item
    locks held (for tests). JSON in and out; only for clients on this host."""
    from ec2mpi.localcloud import fidelity_capacity, fidelity_dynamodb
    method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = -1
    if not _from_this_host(environ):
        status, answer = 403, {"error": "only for clients on the control plane's host"}
    elif not 0 <= length <= 65536:
        status, answer = 413, {"error": "request body too large (or no valid length)"}
    elif path == CONTROL_PREFIX + "capacity":
        body = environ["wsgi.input"].read(length) if length else b""
        status, answer = fidelity_capacity.handle_request(method, body)
    elif path == CONTROL_PREFIX + "dynamodb/item-locks" and method == "GET":
        status, answer = 200, {"locks": fidelity_dynamodb.LOCKS.snapshot()}
    elif path == CONTROL_PREFIX + "ec2/live-instances" and method == "GET":
        region = parse_qs(environ.get("QUERY_STRING", "")).get("region", [""])[0]
        status, answer = (200, {"instances": live_instances(region)}) if region else \
            (400, {"error": "give the region: ?region=NAME"})
    else:
        status, answer = 404, {"error": f"no endpoint {method} {path}"}
    data = json.dumps(answer).encode()
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
              405: "Method Not Allowed", 413: "Payload Too Large"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(data)))])
    return [data]


def live_instances(region: str) -> dict[str, str]:
    """id -> state of the pending and running instances of the local account in `region`,
    read from moto's backend (item 7): what the local cloud's node runner polls four times a
    second. Through DescribeInstanceStatus, moto's XML serializer made that poll cost ~40 ms
    at 32 instances and ~80 ms at 64, a sixth of a core while nodes boot."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    _apply_ec2()
    with _EC2_REQUESTS:    # item 9: never a fleet half made
        backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
        return {i.id: i.state for r in list(backend.reservations.values()) for i in r.instances
                if i.state in ("pending", "running")}


# --------------------------------------------------------------------------- conditions

def _like(pattern: str, value: str) -> bool:
    # IAM wildcards: * any run of characters, ? one character; case-sensitive (not fnmatch: no []
    # sets).
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


# operator -> (match(expected, actual), negated)
_OPERATORS: dict[str, tuple[Callable[[str, str], bool], bool]] = {
    "StringEquals": (lambda e, a: a == e, False),
    "StringNotEquals": (lambda e, a: a == e, True),
    "StringEqualsIgnoreCase": (lambda e, a: a.lower() == e.lower(), False),
    "StringNotEqualsIgnoreCase": (lambda e, a: a.lower() == e.lower(), True),
    "StringLike": (_like, False),
    "StringNotLike": (_like, True),
    "Bool": (lambda e, a: a.lower() == e.lower(), False),
}


def _as_strings(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    return [("true" if v else "false") if isinstance(v, bool) else str(v) for v in values]


def _lookup(context: dict[str, Any], key: str) -> list[str] | None:
    for k, v in context.items():  # condition keys are case-insensitive
        if k.lower() == key.lower():
            return _as_strings(v)
    return None


def evaluate_condition_block(
    conditions: dict[str, dict[str, Any]], context: dict[str, Any] | None
) -> bool:
    """True if every operator/key in a statement's Condition block is met (AWS semantics)."""
    context = context or {}
    for operator, keys in conditions.items():
        if_exists = operator.endswith("IfExists")
        base = operator[: -len("IfExists")] if if_exists else operator
        for key, expected in keys.items():
            expected_values = _as_strings(expected)
            actual = _lookup(context, key)
            if base == "Null":
                want_absent = {v.lower() for v in expected_values}
                if ("true" if actual is None else "false") not in want_absent:
                    return False
                continue
            if base not in _OPERATORS:
                log.warning(
                    "condition operator %s not emulated; treated as met (moto's behaviour)",
                    operator,
                )
                continue
            match, negated = _OPERATORS[base]
            if actual is None:
                if not (if_exists or negated):
                    return False
                continue
            hit = any(match(e, a) for e in expected_values for a in actual)
            if hit == negated:
                return False
    return True


# --------------------------------------------------------------------------- apply

def apply() -> None:
    """Patch moto in this process (idempotent)."""
    global _applied
    if _applied:
        return
    from moto.iam.access_control import IAMPolicy, IAMPolicyStatement, PermissionResult
    from moto.s3 import responses as s3_responses
    from moto.s3.exceptions import BucketAccessDeniedError, MissingBucket, S3AccessDeniedError
    from moto.s3.models import FakeBucket

    # 1. Conditions: AWS semantics; a statement whose condition is not met does not apply.
    original_statement_check = IAMPolicyStatement.is_action_permitted

    def _check_conditions(self, incoming_condition_values=None) -> bool:
        return evaluate_condition_block(
            self._statement.get("Condition") or {}, incoming_condition_values
        )

    def is_action_permitted(
        self, action, resource="*", principal=None, incoming_condition_values=None
    ):
        if self._statement.get("Condition") and not self._check_conditions(
            incoming_condition_values
        ):
            return PermissionResult.NEUTRAL
        return original_statement_check(
            self, action, resource, principal, incoming_condition_values
        )

    IAMPolicyStatement._check_conditions = _check_conditions
    IAMPolicyStatement.is_action_permitted = is_action_permitted

    # 2a. Bucket policies see the request context.
    def get_permission(self, action: str, resource: str) -> Any:
        if self.policy is None:
            return PermissionResult.NEUTRAL
        return IAMPolicy(self.policy.decode()).is_action_permitted(
            action, resource, incoming_condition_values=request_context())

    FakeBucket.get_permission = get_permission

    # 2b. Every S3 request (bucket- and object-level) honours an explicit bucket-policy Deny.
    S3Response = s3_responses.S3Response
    original_authorize = S3Response._authenticate_and_authorize_s3_action

    def _authenticate_and_authorize_s3_action(self, bucket_name=None, key_name=None) -> None:
        original_authorize(self, bucket_name=bucket_name, key_name=key_name)
        _check_expected_source_owner(self)
        if not bucket_name:
            return
        try:
            bucket = self.backend.get_bucket(bucket_name)
        except MissingBucket:
            return  # e.g. CreateBucket: nothing to evaluate yet
        # 5. ExpectedBucketOwner: another account's bucket is AccessDenied.
        expected = self.headers.get("x-amz-expected-bucket-owner")
        if expected and expected != bucket.account_id:
            raise BucketAccessDeniedError(bucket=bucket_name)
        action = self.data.get("Action") if isinstance(self.data, dict) else None
        if not action:
            return
        resource = f"arn:{bucket.partition}:s3:::{bucket_name}" + (
            f"/{key_name}" if key_name else ""
        )
        if bucket.get_permission(f"s3:{action}", resource) == PermissionResult.DENIED:
            raise BucketAccessDeniedError(bucket=bucket_name)

    def _check_expected_source_owner(self) -> None:
        """5. ExpectedSourceBucketOwner (CopyObject, UploadPartCopy) likewise."""
        expected = self.headers.get("x-amz-source-expected-bucket-owner")
        source = self.headers.get("x-amz-copy-source")
        if not expected or not source:
            return
        source_bucket = unquote(source).lstrip("/").split("/", 1)[0]
        try:
            owner = self.backend.get_bucket(source_bucket).account_id
        except MissingBucket:
            return  # moto reports the missing source itself
        if owner != expected:
            raise BucketAccessDeniedError(bucket=source_bucket)

    S3Response._authenticate_and_authorize_s3_action = _authenticate_and_authorize_s3_action

    # 2c. A bucket-policy denial of an object request is an AccessDenied document, not a bare 403.
    original_key_response = S3Response._key_response

    def _key_response(self, request, full_url):
        response = original_key_response(self, request, full_url)
        if (isinstance(response, tuple) and len(response) == 3 and response[0] == 403
                and not response[2] and request.method != "HEAD"):
            raise S3AccessDeniedError()
        return response

    S3Response._key_response = _key_response

    # 3. DynamoDB: per-item locks, transaction conflicts, ClientRequestToken idempotency.
    from ec2mpi.localcloud import fidelity_dynamodb
    fidelity_dynamodb.apply()
    _applied = True


CONSOLES: Path | None = None   # the local cloud's nodes directory (serve --consoles)
CONSOLE_KEPT = 64 * 1024       # what GetConsoleOutput returns of a console, as on EC2
_EC2_LOCK = threading.Lock()
_ec2_applied = False


def backend_app_factory(create_app: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap moto's per-service app factory so that a service's patches are applied when its
    app is first built, before it serves any request. Lazy on purpose: importing moto.ec2
    costs ~1.2 s, which the control plane should not pay before it reports ready."""
    def create(service: str) -> Any:
        if service == "ec2":
            _apply_ec2()
            return _one_request_at_a_time(create_app(service))
        return create_app(service)
    return create


_EC2_REQUESTS = threading.Lock()


def _one_request_at_a_time(app: Callable) -> Callable:
    """9. EC2 requests are atomic to each other: see the module's docstring."""
    def serve(environ, start_response):
        with _EC2_REQUESTS:
            return list(app(environ, start_response))
    return serve


def _apply_ec2() -> None:
    global _ec2_applied
    with _EC2_LOCK:
        if _ec2_applied:
            return
        # 4. Fleet instances carry their launch template's instance profile.
        from moto.ec2.models.fleets import Fleet

        def _attach_profiles(fleet) -> None:
            launched = [
                (r.instance, r.launch_spec)
                for r in fleet.spot_requests
                if getattr(r, "instance", None)
            ]
            launched += [(d["instance"], d["launch_spec"]) for d in fleet.on_demand_instances]
            for instance, spec in launched:
                profile = getattr(spec, "iam_instance_profile", None) or {}
                if isinstance(
                    profile.get("Arn"), dict
                ):  # moto wraps the template's {"Arn"|"Name": ...} again
                    profile = profile["Arn"]
                if (
                    profile
                    and instance.id not in fleet.ec2_backend.iam_instance_profile_associations
                ):
                    fleet.ec2_backend.associate_iam_instance_profile(
                        instance.id, iam_instance_profile_name=profile.get("Name"),
                        iam_instance_profile_arn=profile.get("Arn"))

        for method in ("create_spot_requests", "create_on_demand_requests"):
            original = getattr(Fleet, method)

            def launch_with_profiles(self, weight, _original=original):
                result = _original(self, weight)
                _attach_profiles(self)
                return result

            setattr(Fleet, method, launch_with_profiles)

        # 8. GetConsoleOutput: the instance's own console, its last 64 KiB, as EC2 keeps it.
        if CONSOLES is not None:
            from moto.core.responses import ActionResult
            from moto.core.utils import utcnow
            from moto.ec2.responses.general import General
            from moto.ec2.utils import Base64EncodedString

            def get_console_output(self) -> ActionResult:
                instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
                try:
                    with open(CONSOLES / instance.id / "console.log", "rb") as f:
                        f.seek(0, os.SEEK_END)
                        f.seek(max(0, f.tell() - CONSOLE_KEPT))
                        text = f.read().decode(errors="replace")
                except OSError:
                    text = ""   # not started yet (EC2 answers without output then)
                result = {"InstanceId": instance.id, "Timestamp": utcnow()}
                if text:
                    result["Output"] = Base64EncodedString.from_raw_string(text)
                return ActionResult(result)

            General.get_console_output = get_console_output

        # 6. Capacity pools: fleets and RunInstances launch what the pools allow.
        from ec2mpi.localcloud import fidelity_capacity
        fidelity_capacity.apply_ec2()
        _ec2_applied = True
