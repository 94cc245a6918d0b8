"""The local cloud's IAM: authenticate every request, authorize node requests by their role.

WSGI middleware in the control-plane process, in front of moto (which accepts anything):
- every request must carry a SigV4 signature by a key in the credential store (the client's
  secret key, or a node's role credentials) or by credentials moto's STS issued (a job role
  assumed by a node); anything else gets the service's own "invalid token" error;
- requests signed with role credentials are authorized with that role's policies (inline
  and attached), evaluated with AWS semantics by policy.py on the request's resources and
  condition keys; a denial gets the service's own AccessDenied shape.
The client's key is an administrator's, as the user running ec2mpi is on AWS.
Control endpoints of the fidelity layer (/_ec2mpi/...) keep their own loopback check.
"""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable
from typing import Any, Callable
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlsplit

from . import policy
from .credentials import CredentialStore, Key

log = logging.getLogger(__name__)
ACCOUNT = "123456789012"       # moto's default account: the local cloud's only one


def _scope(environ: dict) -> dict:
    """akid, date, region, service, signed headers and signature of a SigV4 request."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if auth.startswith("AWS4-HMAC-SHA256 "):
        parts = dict(p.strip().split("=", 1) for p in auth[17:].split(",") if "=" in p)
        cred = parts.get("Credential", "").split("/")
        if len(cred) == 5:
            return {"akid": cred[0], "region": cred[2], "service": cred[3],
                    "signed": parts.get("SignedHeaders", "").split(";"),
                    "signature": parts.get("Signature", "")}
    return {}


def _headers(environ: dict) -> dict:
    out = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            out[key.replace("_", "-").title()] = environ[key]
    return out


def signature_ok(environ: dict, scope: dict, key: Key, body: bytes) -> bool:
    """Recompute the request's SigV4 signature with the key's secret (as botocore signs)."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    headers = {k: v for k, v in _headers(environ).items() if k.lower() in scope["signed"]}
    uri = _canonical_uri(
        environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "/"))
    host = headers.get("Host", environ.get("HTTP_HOST", ""))
    request = AWSRequest(method=environ["REQUEST_METHOD"], url=f"https://{host}{uri}",
                         data=body, headers=headers)
    request.context["timestamp"] = headers.get("X-Amz-Date", "")
    cls = S3SigV4Auth if scope["service"] == "s3" else SigV4Auth
    auth = cls(Credentials(key.access_key_id, key.secret, key.token or None), scope["service"],
               scope["region"])
    canonical = auth.canonical_request(request)
    expected = auth.signature(auth.string_to_sign(request, canonical), request)
    return expected == scope["signature"]


def _canonical_uri(uri: str) -> str:
    """The URI with its query encoded as SigV4 canonicalizes it. Clients may send a raw '/'
    in a value (s3fs: prefix=a/b/) yet sign it as %2F; botocore takes the query as given."""
    path, _, query = uri.partition("?")
    if not query:
        return uri
    pairs = parse_qsl(query, keep_blank_values=True)
    return path + "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                                 for k, v in pairs)


class Enforcer:
    def __init__(self, app: Callable, store: CredentialStore):
        self.app, self.store = app, store

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/_ec2mpi/"):
            return self.app(environ, start_response)
        scope = _scope(environ)
        service = scope.get("service") or _guess_service(environ)
        key = self.store.find(scope["akid"]) if scope else None
        if scope and key is None:
            key = _sts_key(scope["akid"])
        body = _body(environ)
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        if key is None:
            return _deny(start_response, service, "InvalidClientTokenId",
                         "The security token included in the request is invalid.", 403)
        if not signature_ok(environ, scope, key, body):
            return _deny(start_response, service, "SignatureDoesNotMatch",
                         "The request signature we calculated does not match the signature "
                         "you provided.", 403)
        if key.role:
            decision = authorize(environ, scope, key, body)
            if not decision.allowed:
                log.info("denied %s: %s", key.userid, decision.reason)
                return _deny(start_response, service, "AccessDenied",
                             f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{key.role}/"
                             f"{key.instance_id} is not authorized: {decision.reason}", 403)
        return self.app(environ, start_response)


def _body(environ: dict) -> bytes:
    """The whole request body (moto reads it again from a fresh stream)."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        return environ["wsgi.input"].read(length)
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        return environ["wsgi.input"].read()
    return b""


def _guess_service(environ: dict) -> str:
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    return "dynamodb" if target.startswith("DynamoDB") else "s3"


def _sts_key(akid: str) -> Key | None:
    """Credentials moto's STS issued (a node assuming a job role)."""
    from moto.sts.models import sts_backends
    try:
        role = sts_backends[ACCOUNT]["global"].get_assumed_role_from_access_key(akid)
    except Exception:  # noqa: BLE001 - unknown to STS: not a key at all
        return None
    if role is None:
        return None
    name = role.role_arn.rsplit("/", 1)[-1]
    return Key(akid, role.secret_access_key, role.session_token, role.session_name, name,
               _role(name).id if _role(name) else "")


def _role(name: str):
    from moto.iam.models import iam_backends
    try:
        return iam_backends[ACCOUNT]["global"].get_role(name)
    except Exception:  # noqa: BLE001 - the role is gone: it grants nothing
        return None


def role_policies(name: str) -> list:
    """The role's inline and attached policy documents (what AWS evaluates for it)."""
    role = _role(name)
    if role is None:
        return []
    docs = [doc for doc in role.policies.values()]
    for managed in role.managed_policies.values():    # each one's default version counts
        docs += [v.document for v in managed.versions if v.is_default]
    return [json.loads(d) if isinstance(d, str) else d for d in docs]


def authorize(environ: dict, scope: dict, key: Key, body: bytes) -> policy.Decision:
    service, region = scope["service"], scope["region"]
    principal = {"aws:userid": key.userid, "aws:PrincipalAccount": ACCOUNT,
                 "aws:SecureTransport": "true" if environ.get("wsgi.url_scheme") == "https"
                 else "false",
                 "ec2:SourceInstanceARN":
                     f"arn:aws:ec2:{region}:{ACCOUNT}:instance/{key.instance_id}"}
    try:
        requests = build_requests(environ, service, region, body)
    except (ValueError, KeyError) as err:   # a request we cannot reason about: denied
        return policy.Decision(policy.Verdict.IMPLICIT_DENY, f"unsupported request: {err}",
                               None, None)
    if requests is None:    # sts:GetCallerIdentity is always allowed
        return policy.Decision(policy.Verdict.ALLOW, "", None, None)
    return policy.evaluate(role_policies(key.role), requests, principal)


def build_requests(environ: dict, service: str, region: str, body: bytes) -> list | None:
    if service == "dynamodb":
        operation = environ.get("HTTP_X_AMZ_TARGET", "").split(".", 1)[-1]
        schema, indexes = _dynamodb_schema(region)
        return policy.dynamodb_requests(operation, json.loads(body or b"{}"), region, ACCOUNT,
                                        key_schema=schema, index_schema=indexes)
    if service == "s3":
        path = unquote(environ.get("PATH_INFO", "/"))
        bucket, _, key = path.lstrip("/").partition("/")
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", ""),
                                               keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in _headers(environ).items()}
        return policy.s3_requests(environ["REQUEST_METHOD"], bucket, key or None, query, headers,
                                  keys=_delete_keys(body) if "delete" in query else ())
    params = parse_qs(body.decode() if body else urlsplit(
        environ.get("RAW_URI", "")).query, keep_blank_values=True)
    action = (params.get("Action") or [""])[0]
    if service == "sts" and action == "GetCallerIdentity":
        return None
    if service == "ec2":
        return policy.ec2_requests(action, params, region, ACCOUNT, _ec2_tags(region),
                                   _lt_id(region), _lt_params(region))
    if service == "sts" and action == "AssumeRole":
        return [policy.Request("sts:AssumeRole", params["RoleArn"][0], {})]
    raise ValueError(f"{service}:{action} is not a node's business")


def _dynamodb_schema(region: str) -> tuple[dict, dict]:
    from moto.dynamodb.models import dynamodb_backends
    tables = dynamodb_backends[ACCOUNT][region].tables
    schema = {n: (t.hash_key_attr, t.range_key_attr) for n, t in tables.items()}
    indexes = {}
    for name, table in tables.items():
        for index in list(table.global_indexes) + list(table.indexes):
            hash_key = next(k["AttributeName"] for k in index.schema if k["KeyType"] == "HASH")
            indexes[(name, index.name)] = hash_key
    return schema, indexes


def _delete_keys(body: bytes) -> list[str]:
    import xml.etree.ElementTree as ET
    root = ET.fromstring(body or b"<Delete/>")
    return [el.text or "" for el in root.iter() if el.tag.endswith("Key")]


def _ec2(region: str):
    from moto.ec2.models import ec2_backends
    return ec2_backends[ACCOUNT][region]


def _ec2_tags(region: str) -> Callable[[str], dict]:
    def tags_of(resource_id: str) -> dict:
        try:
            return {t["key"]: t["value"] for t in _ec2(region).describe_tags(
                filters={"resource-id": [resource_id]})}
        except Exception:  # noqa: BLE001 - unknown resource: no tags
            return {}
    return tags_of


def _lt_id(region: str) -> Callable[[str], str | None]:
    def lookup(name: str) -> str | None:
        return _ec2(region).launch_template_name_to_ids.get(name)
    return lookup


def _lt_params(region: str) -> Callable[[str], dict]:
    """The template's data as RunInstances-style params (what the launch really uses)."""
    def params(lt_id: str) -> dict:
        template = _ec2(region).launch_templates.get(lt_id)
        if template is None:
            return {}
        data: dict[str, Any] = template.latest_version().data
        out: dict[str, list[str]] = {}
        if data.get("ImageId"):
            out["ImageId"] = [data["ImageId"]]
        for i, sg in enumerate(data.get("SecurityGroupIds") or data.get("SecurityGroupId") or []):
            out[f"SecurityGroupId.{i + 1}"] = [sg]
        specs = [spec for spec in data.get("TagSpecifications") or data.get("TagSpecification")
                 or [] if spec.get("ResourceType") != "launch-template"]  # the template's own
        for i, spec in enumerate(specs, 1):
            out[f"TagSpecification.{i}.ResourceType"] = [spec.get("ResourceType", "")]
            for j, tag in enumerate(spec.get("Tags") or spec.get("Tag") or [], 1):
                out[f"TagSpecification.{i}.Tag.{j}.Key"] = [tag.get("Key", "")]
                out[f"TagSpecification.{i}.Tag.{j}.Value"] = [tag.get("Value", "")]
        return out
    return params


_JSON_SERVICES = ("dynamodb",)


def _deny(start_response: Callable, service: str, code: str, message: str,
          status: int) -> list[bytes]:
    """The service's own error shape, so clients report it like AWS's."""
    if service in _JSON_SERVICES:
        codes = {"InvalidClientTokenId": "UnrecognizedClientException",
                 "SignatureDoesNotMatch": "InvalidSignatureException",
                 "AccessDenied": "AccessDeniedException"}
        body = json.dumps({"__type": f"com.amazon.coral.service#{codes.get(code, code)}",
                           "message": message}).encode()
        start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.0"),
                                           ("Content-Length", str(len(body)))])
        return [body]
    if service == "ec2":
        code = {"AccessDenied": "UnauthorizedOperation"}.get(code, "AuthFailure")
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error><Code>{code}"
                f"</Code><Message>{_xml(message)}</Message></Error></Errors><RequestID>local"
                f"</RequestID></Response>").encode()
    elif service == "s3":
        code = {"InvalidClientTokenId": "InvalidAccessKeyId"}.get(code, code)
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>"
                f"{_xml(message)}</Message><RequestId>local</RequestId></Error>").encode()
    else:
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>"
                f"{_xml(message)}</Message></Error><RequestId>local</RequestId>"
                f"</ErrorResponse>").encode()
    start_response(f"{status} Forbidden", [("Content-Type", "text/xml"),
                                           ("Content-Length", str(len(body)))])
    return [body]


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
