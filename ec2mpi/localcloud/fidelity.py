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

3. DynamoDB request serialization: DynamoDB guarantees per-item atomicity of conditional
   writes, UpdateItem ADD and TransactWriteItems; moto's backend is plain Python under a
   threaded server. `RequestContextMiddleware` runs every DynamoDB request (X-Amz-Target
   `DynamoDB_*`) under one lock, which makes each request atomic w.r.t. the others.
   TransactWriteItems is idempotent on AWS for 10 minutes per ClientRequestToken (botocore
   fills one in and keeps it across retries); moto applied a retried transaction twice
   (seen under load: a read timeout, a retry, an epoch bumped by 2). We replay the first
   answer for a token we have seen.

4. EC2 Fleet instance profiles (moto/ec2/models/fleets.py Fleet.create_*_requests): moto
   reads `IamInstanceProfile` from the launch template but never gives it to the
   instances it launches, so nodes had no role and no credentials. AWS attaches the
   template's profile to every instance; we associate it after each fleet launch.
   Applied by `backend_app_factory` when the EC2 app is first built (lazily, see there).
"""
from __future__ import annotations

import contextvars
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any, Callable

log = logging.getLogger(__name__)

# Per-request context: set by the middleware, read by the patched moto code.
_request_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "ec2mpi_request_context", default=None)

_DYNAMODB_LOCK = threading.Lock()
_applied = False


def request_context() -> dict[str, str]:
    """The condition keys of the request being served (empty outside a request)."""
    return dict(_request_context.get() or {})


class RequestContextMiddleware:
    """WSGI middleware: one instance per listener, records whether requests arrived over TLS.

    The flag comes from the listener (the HTTPS or the HTTP server), not from anything the
    client sends, so it cannot be spoofed with headers such as X-Forwarded-Proto.
    """

    def __init__(self, app: Callable, *, secure: bool):
        self.app, self.secure = app, secure

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        token = _request_context.set({"aws:SecureTransport": "true" if self.secure else "false"})
        try:
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            if target.startswith("DynamoDB_"):
                with _DYNAMODB_LOCK:
                    if target.endswith(".TransactWriteItems"):
                        return _idempotent_transaction(self.app, environ, start_response)
                    # Consume the (already materialized) response under the lock, so that
                    # no backend work can escape it.
                    return _consume(self.app(environ, start_response))
            return self.app(environ, start_response)
        finally:
            _request_context.reset(token)


def _consume(body: Iterable[bytes]) -> list[bytes]:
    try:
        return list(body)
    finally:
        if hasattr(body, "close"):
            body.close()


_TRANSACTIONS: dict[
    str, tuple[float, str, list, list[bytes]]
] = {}  # token -> (time, status, headers, body)
_TOKEN_TTL = 600.0


def _idempotent_transaction(
    app: Callable, environ: dict[str, Any], start_response: Callable
) -> list[bytes]:
    """TransactWriteItems with AWS's ClientRequestToken semantics (caller holds the lock)."""
    import io
    import json
    import time
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(raw)
    try:
        token = json.loads(raw or b"{}").get("ClientRequestToken")
    except ValueError:
        token = None
    now = time.monotonic()
    for old in [t for t, v in _TRANSACTIONS.items() if now - v[0] > _TOKEN_TTL]:
        del _TRANSACTIONS[old]
    if token and token in _TRANSACTIONS:
        _, status, headers, body = _TRANSACTIONS[token]
        start_response(status, headers)
        return body
    captured = {}

    def capture(status, headers, exc_info=None):
        captured.update(status=status, headers=list(headers))
        return (
            start_response(status, headers, exc_info)
            if exc_info
            else start_response(status, headers)
        )

    body = _consume(app(environ, capture))
    if token and captured.get("status", "").startswith("200"):
        _TRANSACTIONS[token] = (now, captured["status"], captured["headers"], body)
    return body


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
        action = self.data.get("Action") if isinstance(self.data, dict) else None
        if not bucket_name or not action:
            return
        try:
            bucket = self.backend.get_bucket(bucket_name)
        except MissingBucket:
            return  # e.g. CreateBucket: nothing to evaluate yet
        resource = f"arn:{bucket.partition}:s3:::{bucket_name}" + (
            f"/{key_name}" if key_name else ""
        )
        if bucket.get_permission(f"s3:{action}", resource) == PermissionResult.DENIED:
            raise BucketAccessDeniedError(bucket=bucket_name)

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
    _applied = True


_EC2_LOCK = threading.Lock()
_ec2_applied = False


def backend_app_factory(create_app: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap moto's per-service app factory so that a service's patches are applied when its
    app is first built, before it serves any request. Lazy on purpose: importing moto.ec2
    costs ~1.2 s, which the control plane should not pay before it reports ready."""
    def create(service: str) -> Any:
        if service == "ec2":
            _apply_ec2()
        return create_app(service)
    return create


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
        _ec2_applied = True
