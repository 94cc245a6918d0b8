"""IAM identity-policy evaluation for the local cloud's fidelity layer (pure, stdlib only).

moto does not enforce IAM the way AWS does, yet the product's security model IS its node
roles' policies. The control plane builds, per API call, the list of `Request`s AWS would
authorize (`dynamodb_requests`, `s3_requests`, `ec2_requests`) and asks `evaluate`.

Evaluation (AWS semantics): a statement applies when its Action/NotAction, Resource/NotResource
and Condition all match; any applicable Deny wins; otherwise every request needs an Allow.
A condition operator we do not know makes an Allow not apply and a Deny apply (fail closed).

Approximated vs AWS (one line each):
- Only identity policies: no Principal/NotPrincipal, resource policies, SCPs, boundaries, sessions.
- Resource and Arn* patterns starting `arn:` match segment-wise; other patterns match whole.
- Unqualified operators over a multivalued key: positive = any value matches, negated = none does.
- An empty multivalued key counts as absent (Null true, ForAllValues true, ForAnyValue false).
- DynamoDB: the key schema comes from the caller; a request whose leading key cannot be found
  raises ValueError (the caller answers AccessDenied); BatchGet/BatchWrite are authorized once
  per table with all its partition keys (multivalued dynamodb:LeadingKeys), as on AWS.
- dynamodb:Attributes: top-level names in Item/Key, Update/Condition/Projection expressions and
  legacy AttributeUpdates/Expected/AttributesToGet; Query/Scan filter names are not included.
- S3: object keys must arrive URL-decoded; unknown query keys are ignored (the method's default
  action); condition keys only from a few headers; s3:ResourceAccount = the expected owner.
- EC2 launches: the template's contents count only if the caller passes `template_params`;
  CreateFleet itself is authorized on `fleet/*` only; spot-instances-request, elastic-gpu and
  security groups named (not by id) are omitted; ec2:IsLaunchTemplateResource is not set.
"""
from __future__ import annotations

import functools
import ipaddress
import json
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Union
from urllib.parse import unquote

ContextValue = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Request:
    """One authorization AWS performs: an IAM action on ONE resource with its condition keys."""
    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)


class Verdict(str, Enum):
    ALLOW = "ALLOW"
    EXPLICIT_DENY = "EXPLICIT_DENY"
    IMPLICIT_DENY = "IMPLICIT_DENY"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str                     # readable, for the AccessDenied message
    request: Request | None = None  # the request that was denied
    sid: str | None = None          # the denying statement (explicit deny)

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


class _Unsupported(Exception):
    """A condition operator this evaluator does not know."""


# --------------------------------------------------------------------------- evaluation

def evaluate(policies: Sequence[Any], requests: Sequence[Request],
             principal: Mapping[str, ContextValue]) -> Decision:
    """Decide a whole API call: every request must be allowed, any explicit Deny wins.

    `principal` holds the identity keys (aws:userid, ec2:SourceInstanceARN, ...) and any other
    keys true of the whole call (aws:SecureTransport): they join every request's context and
    cannot be overridden by it."""
    statements = []
    for doc in policies:
        doc = json.loads(doc) if isinstance(doc, str) else doc
        variables = doc.get("Version") == "2012-10-17"  # 2008-10-17 has no policy variables
        statements += [(s, variables) for s in _listify(doc.get("Statement", []))]
    if not requests:
        return Decision(Verdict.IMPLICIT_DENY, "no request to authorize (call not modelled)")
    unallowed = None
    for req in requests:
        ctx = _context(req.context, principal)
        allowed = False
        for i, (stmt, variables) in enumerate(statements):
            effect = stmt.get("Effect")
            try:
                applies = _applies(stmt, req, ctx, variables)
            except _Unsupported:
                applies = effect == "Deny"
            if applies and effect == "Deny":
                sid = stmt.get("Sid") or f"#{i}"
                return Decision(Verdict.EXPLICIT_DENY,
                                f"not authorized to perform: {req.action} on resource: "
                                f"{req.resource} with an explicit deny in an identity-based "
                                f"policy (statement {sid})", req, sid)
            allowed = allowed or (applies and effect == "Allow")
        if not allowed and unallowed is None:
            unallowed = req
    if unallowed is not None:
        return Decision(Verdict.IMPLICIT_DENY,
                        f"not authorized to perform: {unallowed.action} on resource: "
                        f"{unallowed.resource} because no identity-based policy allows the "
                        f"{unallowed.action} action", unallowed)
    return Decision(Verdict.ALLOW, "allowed")


def _listify(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _s(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _context(context: Mapping[str, ContextValue], principal: Mapping[str, ContextValue]) -> dict:
    """Lower-cased key -> list of values (condition key names are case-insensitive)."""
    out: dict[str, list[str]] = {}
    for source in (context, principal):
        for key, value in source.items():
            values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
            out[key.lower()] = [_s(v) for v in values]
    return out


def _applies(stmt: dict, req: Request, ctx: dict, variables: bool) -> bool:
    for positive, negative, value, kind in (("Action", "NotAction", req.action, "action"),
                                            ("Resource", "NotResource", req.resource, "arn")):
        if positive in stmt:
            if not any(_pattern_match(p, value, ctx, variables, kind) for p in
                       _listify(stmt[positive])):
                return False
        elif negative in stmt:
            if any(_pattern_match(p, value, ctx, variables, kind) for p in
                   _listify(stmt[negative])):
                return False
        else:
            return False  # an identity-policy statement needs both elements
    return _conditions_met(stmt.get("Condition") or {}, ctx, variables)


def _pattern_match(pattern: str, value: str, ctx: dict, variables: bool, kind: str) -> bool:
    if kind == "action":  # no policy variables in Action; case-insensitive
        return _compile([("pat", pattern)], True, False, True).fullmatch(value) is not None
    tokens = _tokens(pattern, ctx, variables)
    return tokens is not None and _compile(tokens, True, True).fullmatch(value) is not None


_VARIABLE = re.compile(r"\$\{([^}]*)\}")


def _tokens(text: str, ctx: dict, variables: bool) -> list[tuple[str, str]] | None:
    """Split a policy string into pattern text and literal text (resolved variables and the
    ${*} ${?} ${$} escapes). None if a variable has no single value and no default."""
    if not variables:
        return [("pat", text)]
    out, pos = [], 0
    for m in _VARIABLE.finditer(text):
        out.append(("pat", text[pos:m.start()]))
        inner = m.group(1).strip()
        if inner in ("*", "?", "$"):
            out.append(("lit", inner))
        else:
            name, comma, default = inner.partition(",")
            values = ctx.get(name.strip().lower())
            default = default.strip()
            if values is not None and len(values) == 1:
                out.append(("lit", values[0]))
            elif comma and len(default) >= 2 and default[0] == default[-1] == "'":
                out.append(("lit", default[1:-1]))
            else:
                return None
        pos = m.end()
    out.append(("pat", text[pos:]))
    return out


def _compile(tokens: list[tuple[str, str]], wildcards: bool, arn: bool,
             ignore_case: bool = False) -> re.Pattern:
    """The pattern, compiled once: every request of a node asks for the same few."""
    return _compiled(tuple(tokens), wildcards, arn, ignore_case)


@functools.lru_cache(maxsize=4096)
def _compiled(tokens: tuple[tuple[str, str], ...], wildcards: bool, arn: bool,
              ignore_case: bool) -> re.Pattern:
    """Wildcards * and ? in pattern text only. In an ARN pattern a wildcard in the first five
    segments stays within its segment (AWS checks each of the six segments separately)."""
    segmented = arn and "".join(t for _, t in tokens).startswith("arn:")
    parts, colons = [], 0
    for kind, text in tokens:
        if kind == "lit":
            parts.append(re.escape(text))
            continue
        for c in text:
            inside = segmented and colons < 5
            if wildcards and c == "*":
                parts.append("[^:]*" if inside else ".*")
            elif wildcards and c == "?":
                parts.append("[^:]" if inside else ".")
            else:
                parts.append(re.escape(c))
            colons += c == ":"
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _ip(actual: str, expected: str) -> bool:
    return ipaddress.ip_address(actual) in ipaddress.ip_network(expected, strict=False)


# base operator -> (kind, compare(actual, expected)); Date* and Binary* are not emulated
_POSITIVE: dict[str, tuple[str, Callable | None]] = {
    "StringEquals": ("str", operator.eq),
    "StringEqualsIgnoreCase": ("str", lambda a, e: a.casefold() == e.casefold()),
    "StringLike": ("like", None),
    "ArnEquals": ("arn", None), "ArnLike": ("arn", None),
    "Bool": ("str", lambda a, e: a.lower() == e.lower()),
    "IpAddress": ("ip", _ip),
    **{f"Numeric{n}": ("num", f) for n, f in (
        ("Equals", operator.eq), ("LessThan", operator.lt), ("LessThanEquals", operator.le),
        ("GreaterThan", operator.gt), ("GreaterThanEquals", operator.ge))},
}
_NEGATED = {n: n.replace("Not", "", 1) for n in (
    "StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike",
    "NumericNotEquals", "NotIpAddress")}


def _value_match(base: str, expected: str, actual: str, ctx: dict, variables: bool) -> bool:
    """Does ONE request value match ONE policy value under a positive operator?"""
    kind, compare = _POSITIVE[base]
    if kind in ("str", "like", "arn"):
        tokens = _tokens(expected, ctx, variables)
        if tokens is None:
            return False  # a variable without a value matches nothing
        if kind == "str":
            return compare(actual, "".join(t for _, t in tokens))
        return _compile(tokens, True, kind == "arn").fullmatch(actual) is not None
    try:
        if kind == "num":
            return compare(float(actual), float(expected))
        return compare(actual, expected)
    except ValueError:
        return False


def _conditions_met(block: Mapping[str, Mapping[str, Any]], ctx: dict, variables: bool) -> bool:
    """Operators AND, keys within an operator AND, a key's policy values OR."""
    for op, keys in block.items():
        qualifier, _, name = op.rpartition(":")
        qualifier = qualifier.lower()
        if qualifier not in ("", "forallvalues", "foranyvalue"):
            raise _Unsupported(op)
        if_exists = name.endswith("IfExists")
        base = name[: -len("IfExists")] if if_exists else name
        negated = base in _NEGATED
        base = _NEGATED.get(base, base)
        if base != "Null" and base not in _POSITIVE:
            raise _Unsupported(op)
        for key, expected in keys.items():
            expected_values = [_s(v) for v in _listify(expected)]
            actual = ctx.get(key.lower()) or None  # an empty list counts as absent
            if base == "Null":
                if ("true" if actual is None else "false") not in {
                        v.lower() for v in expected_values}:
                    return False
                continue

            def ok(a: str, base=base, negated=negated, expected=expected_values) -> bool:
                hit = any(_value_match(base, e, a, ctx, variables) for e in expected)
                return not hit if negated else hit  # negated: equal to none of the values

            if actual is None:
                met = if_exists or qualifier == "forallvalues" or (negated and not qualifier)
            elif qualifier == "forallvalues" or (not qualifier and negated):
                met = all(ok(a) for a in actual)
            else:
                met = any(ok(a) for a in actual)
            if not met:
                return False
    return True


# --------------------------------------------------------------------------- DynamoDB

_KEYWORDS = {"set", "remove", "add", "delete", "and", "or", "not", "between", "in"}
_PATH = re.compile(r"(#\w+|[A-Za-z_]\w*)(?:\s*(?:\.\s*(?:#\w+|[A-Za-z_]\w*)|\[\s*\d+\s*\]))*"
                   r"|:\w+")


def _expression_names(expression: str | None, names: Mapping[str, str]) -> set[str]:
    """Top-level attribute names an expression touches (#placeholders substituted; an unknown
    placeholder stays as written, so it matches no policy value)."""
    out = set()
    for m in _PATH.finditer(expression or ""):
        head = m.group(1)
        if head is None or head.lower() in _KEYWORDS:
            continue
        if expression[m.end():].lstrip().startswith("("):
            continue  # a function: attribute_exists(...), size(...), if_not_exists(...)
        out.add(names.get(head, head) if head.startswith("#") else head)
    return out


def _av(value: Mapping[str, Any]) -> str:
    """The string form of a low-level key attribute value ({"S": "x"}, {"N": "1"}, {"B": ...})."""
    return _s(next(iter(value.values()))) if value else ""


def _schema(key_schema: Mapping[str, tuple], table: str) -> tuple:
    if table not in key_schema:
        raise ValueError(f"key schema of table {table!r} unknown: cannot authorize")
    return key_schema[table]


def _projection(body: Mapping[str, Any], names: Mapping[str, str]) -> list[str] | None:
    if body.get("ProjectionExpression"):
        return sorted(_expression_names(body["ProjectionExpression"], names))
    return sorted(body["AttributesToGet"]) if body.get("AttributesToGet") else None


def _passthrough(body: Mapping[str, Any], ctx: dict) -> dict:
    for key in ("Select", "ReturnValues", "ReturnConsumedCapacity"):
        if body.get(key):
            ctx[f"dynamodb:{key}"] = body[key]
    return ctx


def _item_request(op: str, body: Mapping[str, Any], arn: Callable[[str], str],
                  key_schema: Mapping[str, tuple]) -> Request:
    """GetItem/PutItem/UpdateItem/DeleteItem/ConditionCheckItem on one item."""
    table = body["TableName"]
    hash_attr = _schema(key_schema, table)[0]
    names = body.get("ExpressionAttributeNames") or {}
    key = body.get("Item" if op == "PutItem" else "Key") or {}
    if hash_attr not in key:
        raise ValueError(f"{op} on {table!r} names no partition key {hash_attr!r}")
    ctx: dict[str, Any] = {"dynamodb:LeadingKeys": [_av(key[hash_attr])]}
    if op == "GetItem":
        projected = _projection(body, names)
        if projected is not None:
            ctx["dynamodb:Attributes"] = projected
    else:
        attrs = set(key) | set(body.get("AttributeUpdates") or {}) | set(body.get("Expected") or {})
        for expr in ("UpdateExpression", "ConditionExpression"):
            attrs |= _expression_names(body.get(expr), names)
        ctx["dynamodb:Attributes"] = sorted(attrs)
    return Request(f"dynamodb:{op}", arn(table), _passthrough(body, ctx))


def _query_leading_key(body: Mapping[str, Any], hash_attr: str, names: Mapping[str, str]) -> str:
    values = body.get("ExpressionAttributeValues") or {}
    name = r"(?<![\w.#:])(#\w+|[A-Za-z_]\w*)(?![\w.\[])"  # a whole top-level name
    for m in re.finditer(rf"{name}\s*=\s*(:\w+)|(:\w+)\s*=\s*{name}",
                         body.get("KeyConditionExpression") or ""):
        attr, placeholder = (m[1], m[2]) if m[1] else (m[4], m[3])
        if names.get(attr, attr) == hash_attr and placeholder in values:
            return _av(values[placeholder])
    condition = (body.get("KeyConditions") or {}).get(hash_attr) or {}
    if condition.get("ComparisonOperator") == "EQ" and condition.get("AttributeValueList"):
        return _av(condition["AttributeValueList"][0])
    raise ValueError(f"Query names no `{hash_attr} = :value` key condition: cannot authorize")


def dynamodb_requests(operation: str, body: Mapping[str, Any], region: str, account: str,
                      key_schema: Mapping[str, tuple] | None = None,
                      index_schema: Mapping[tuple[str, str], str] | None = None) -> list[Request]:
    """The requests AWS authorizes for one DynamoDB call (JSON body, low-level values).

    key_schema: table -> (hash attribute, range attribute or None); index_schema:
    (table, index) -> the index's hash attribute. ValueError: not authorizable as written."""
    key_schema, index_schema = key_schema or {}, index_schema or {}

    def arn(table: str) -> str:
        return f"arn:aws:dynamodb:{region}:{account}:table/{table}"

    if operation in ("GetItem", "PutItem", "UpdateItem", "DeleteItem"):
        return [_item_request(operation, body, arn, key_schema)]
    if operation in ("TransactWriteItems", "TransactGetItems"):
        kinds = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                 "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}
        out = []
        for entry in body.get("TransactItems") or []:
            for kind, item in entry.items():
                if kind not in kinds:
                    raise ValueError(f"unknown transaction item {kind!r}")
                out.append(_item_request(kinds[kind], item, arn, key_schema))
        return out
    if operation in ("BatchGetItem", "BatchWriteItem"):
        out = []
        for table, spec in (body.get("RequestItems") or {}).items():
            hash_attr = _schema(key_schema, table)[0]
            if operation == "BatchGetItem":
                items = spec.get("Keys") or []
                projected = _projection(spec, spec.get("ExpressionAttributeNames") or {})
            else:
                items = [(w.get("PutRequest") or {}).get("Item") or
                         (w.get("DeleteRequest") or {}).get("Key") or {} for w in spec]
                projected = sorted({a for item in items for a in item})
            if any(hash_attr not in item for item in items):
                raise ValueError(f"{operation} on {table!r}: an item lacks {hash_attr!r}")
            ctx: dict[str, Any] = {"dynamodb:LeadingKeys": sorted({_av(i[hash_attr])
                                                                   for i in items})}
            if projected is not None:
                ctx["dynamodb:Attributes"] = projected
            out.append(Request(f"dynamodb:{operation}", arn(table), ctx))
        return out
    if operation in ("Query", "Scan"):
        table, index = body["TableName"], body.get("IndexName")
        names = body.get("ExpressionAttributeNames") or {}
        resource = arn(table) + (f"/index/{index}" if index else "")
        ctx = {}
        if operation == "Query":
            if index and (table, index) not in index_schema:
                raise ValueError(f"schema of index {index!r} of {table!r} unknown")
            hash_attr = index_schema[(table, index)] if index else _schema(key_schema, table)[0]
            ctx["dynamodb:LeadingKeys"] = [_query_leading_key(body, hash_attr, names)]
        projected = _projection(body, names)
        if projected is not None:
            ctx["dynamodb:Attributes"] = projected
        return [Request(f"dynamodb:{operation}", resource, _passthrough(body, ctx))]
    if operation == "ListTables" or not body.get("TableName"):
        return [Request(f"dynamodb:{operation}", "*", {})]
    return [Request(f"dynamodb:{operation}", arn(body["TableName"]), {})]  # DescribeTable, ...


# --------------------------------------------------------------------------- S3

# Query keys naming a sub-resource: the IAM action is <Get|Put|Delete><Bucket|Object><Key>
# (IAM action names are case-insensitive) unless _S3_SPECIAL names it (for GET, PUT, DELETE).
_S3_SUBRESOURCES = {
    "policy", "acl", "tagging", "versioning", "location", "encryption", "lifecycle", "cors",
    "website", "notification", "logging", "publicAccessBlock", "ownershipControls",
    "object-lock", "policyStatus", "replication", "accelerate", "requestPayment", "versions",
    "uploads", "retention", "legal-hold", "attributes", "uploadId"}
_S3_SPECIAL = {k: v.split() for k, v in {
    "encryption": "GetEncryptionConfiguration PutEncryptionConfiguration -",
    "lifecycle": "GetLifecycleConfiguration PutLifecycleConfiguration -",
    "replication": "GetReplicationConfiguration PutReplicationConfiguration -",
    "accelerate": "GetAccelerateConfiguration PutAccelerateConfiguration -",
    "object-lock": "GetBucketObjectLockConfiguration PutBucketObjectLockConfiguration -",
    "versions": "ListBucketVersions - -", "uploads": "ListBucketMultipartUploads - -",
    "legal-hold": "GetObjectLegalHold PutObjectLegalHold -",
    "uploadId": "ListMultipartUploadParts PutObject AbortMultipartUpload",
}.items()}  # "-": the generic name
# bucket sub-resources whose DELETE is authorized as the PUT action (DeleteBucketTagging, ...)
_S3_DELETE_IS_PUT = {"tagging", "cors", "publicAccessBlock", "ownershipControls", "encryption",
                     "lifecycle", "replication"}
_S3_VERSIONED = {"GetObject", "DeleteObject", "GetObjectAcl", "PutObjectAcl", "GetObjectTagging",
                 "PutObjectTagging", "DeleteObjectTagging", "GetObjectAttributes"}
_S3_HEADERS = ("x-amz-acl", "x-amz-server-side-encryption",
               "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-storage-class",
               "x-amz-copy-source", "x-amz-metadata-directive", "x-amz-content-sha256")


def s3_requests(method: str, bucket: str, key: str | None, query: Mapping[str, str],
                headers: Mapping[str, str], keys: Sequence[str] = ()) -> list[Request]:
    """The requests AWS authorizes for one S3 REST call (key URL-decoded; `keys`: the object
    keys of a DeleteObjects body)."""
    method = method.upper()
    hdr = {k.lower(): v for k, v in headers.items()}
    ctx: dict[str, Any] = {f"s3:{h}": hdr[h] for h in _S3_HEADERS if h in hdr}
    if "x-amz-expected-bucket-owner" in hdr:
        ctx["s3:ResourceAccount"] = hdr["x-amz-expected-bucket-owner"]
    if not bucket:
        return [Request("s3:ListAllMyBuckets", "*", ctx)]
    verb = {"GET": "Get", "HEAD": "Get", "PUT": "Put", "DELETE": "Delete"}.get(method, "")
    sub = next((q for q in query if q in _S3_SUBRESOURCES), None)
    resource = f"arn:aws:s3:::{bucket}" + (f"/{key}" if key else "")
    if method == "POST":
        if not key and "delete" in query:
            return [Request("s3:DeleteObject", f"arn:aws:s3:::{bucket}/{k}", ctx) for k in keys]
        action = {"restore": "RestoreObject", "select": "GetObject"}.get(
            next((q for q in query if q in ("restore", "select")), ""), "PutObject")
    elif sub and verb:
        if verb == "Delete" and not key and sub in _S3_DELETE_IS_PUT:
            verb = "Put"
        named = _S3_SPECIAL.get(sub, ["-"] * 3)["GPD".index(verb[0])]
        generic = f"{verb}{'Object' if key else 'Bucket'}{sub[0].upper()}{sub[1:]}"
        action = generic if named == "-" else named
    elif key:
        action = {"Get": "GetObject", "Put": "PutObject", "Delete": "DeleteObject"}.get(
            verb, f"{method.title()}Object")
    else:
        action = {"Get": "ListBucket", "Put": "CreateBucket", "Delete": "DeleteBucket"}.get(
            verb, f"{method.title()}Bucket")
    if key and "versionId" in query and action in _S3_VERSIONED:
        action = action.replace("Object", "ObjectVersion", 1)
        ctx["s3:versionid"] = query["versionId"]
    if action in ("ListBucket", "ListBucketVersions"):
        for param in ("prefix", "delimiter", "max-keys"):
            if param in query:
                ctx[f"s3:{param}"] = query[param]
    out = [Request(f"s3:{action}", resource, ctx)]
    if key and method == "PUT" and "x-amz-copy-source" in hdr:  # copies also read the source
        source, _, version = unquote(hdr["x-amz-copy-source"]).lstrip("/").partition("?versionId=")
        out.append(Request("s3:GetObjectVersion" if version else "s3:GetObject",
                           f"arn:aws:s3:::{source}", {}))
    return out


# --------------------------------------------------------------------------- EC2

_EC2_PREFIXES = {
    "i": "instance", "vol": "volume", "eni": "network-interface", "sg": "security-group",
    "subnet": "subnet", "vpc": "vpc", "ami": "image", "snap": "snapshot", "lt": "launch-template",
    "fleet": "fleet", "key": "key-pair", "igw": "internet-gateway", "rtb": "route-table",
    "acl": "network-acl", "sir": "spot-instances-request", "eipalloc": "elastic-ip",
    "nat": "natgateway", "pg": "placement-group", "dopt": "dhcp-options"}
# param-name suffix -> resource type of an EXISTING resource a launch uses
_LAUNCH_REFERENCES = [(re.compile(r"(?:^|\.)SubnetId$"), "subnet"),
                      (re.compile(r"(?:^|\.)SecurityGroupId(?:\.\d+)?$"), "security-group"),
                      (re.compile(r"(?:^|\.)ImageId$"), "image"),
                      (re.compile(r"(?:^|\.)KeyName$"), "key-pair"),
                      (re.compile(r"(?:^|\.)Placement\.GroupName$"), "placement-group"),
                      (re.compile(r"(?:^|\.)NetworkInterfaceId$"), "network-interface")]


def _first(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _numbered(params: Mapping[str, list[str]], prefix: str) -> list[str]:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)")
    found = sorted((int(m[1]), v[0]) for k, v in params.items()
                   if v and (m := pattern.fullmatch(k)))
    return [v for _, v in found] + ([params[prefix][0]] if params.get(prefix) else [])


def _tags(params: Mapping[str, list[str]], prefix: str) -> dict[str, str]:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.Key")
    return {v[0]: _first(params, f"{prefix}.{m[1]}.Value") or ""
            for k, v in params.items() if v and (m := pattern.fullmatch(k))}


def _request_tags(tags: Mapping[str, str]) -> dict[str, Any]:
    ctx: dict[str, Any] = {f"aws:RequestTag/{k}": v for k, v in tags.items()}
    return {**ctx, "aws:TagKeys": sorted(tags)} if tags else ctx


def _resource_tags(tags: Mapping[str, str]) -> dict[str, str]:
    return {f"{p}:ResourceTag/{k}": v for k, v in tags.items() for p in ("ec2", "aws")}


def ec2_requests(action: str, params: Mapping[str, list[str]], region: str, account: str,
                 tags_of: Callable[[str], Mapping[str, str]],
                 launch_template_id_of: Callable[[str], str | None] | None = None,
                 template_params: Callable[[str], Mapping[str, list[str]]] | None = None
                 ) -> list[Request]:
    """The requests AWS authorizes for one EC2 Query API call (params as from parse_qs).

    tags_of(id): an existing resource's tags ({} if unknown). launch_template_id_of(name):
    resolves a LaunchTemplateName. template_params(lt_id), optional: the template version's
    data as RunInstances-style params (ImageId, SecurityGroupId.N, TagSpecification.N...), so
    that a launch is authorized with its resolved parameters, the request's winning per type.
    iam:PassRole is the caller's to check."""
    def arn(rtype: str, rid: str) -> str:
        owner = "" if rtype in ("image", "snapshot") else account  # AMI/snapshot ARNs: no account
        return f"arn:aws:ec2:{region}:{owner}:{rtype}/{rid}"

    def typed(rid: str) -> str:
        prefix = rid.split("-", 1)[0]
        return arn(_EC2_PREFIXES.get(prefix, prefix), rid)

    if action.startswith("Describe"):
        return [Request(f"ec2:{action}", "*", {})]
    if action in ("CreateTags", "DeleteTags"):
        tags = _tags(params, "Tag")
        ctx = _request_tags(tags) if action == "CreateTags" else {
            **{f"aws:RequestTag/{k}": v for k, v in tags.items() if v}, "aws:TagKeys": sorted(tags)}
        return [Request(f"ec2:{action}", typed(rid), {**ctx, **_resource_tags(tags_of(rid))})
                for rid in _numbered(params, "ResourceId")]
    if action in ("RunInstances", "CreateFleet"):
        return _launch_requests(action, params, arn, tags_of, launch_template_id_of,
                                template_params)
    instances = _numbered(params, "InstanceId")
    if instances:  # TerminateInstances, StopInstances, ModifyInstanceAttribute, ...
        return [Request(f"ec2:{action}", arn("instance", i), _resource_tags(tags_of(i)))
                for i in instances]
    return [Request(f"ec2:{action}", "*", {})]


def _tag_specs(params: Mapping[str, list[str]]) -> dict[str, dict[str, str]]:
    """resource type -> tags, from TagSpecification.N.ResourceType / .Tag.M.Key|Value."""
    specs: dict[str, dict[str, str]] = {}
    for k, v in params.items():
        m = re.fullmatch(r"TagSpecification\.(\d+)\.ResourceType", k)
        if m and v:
            specs.setdefault(v[0], {}).update(_tags(params, f"TagSpecification.{m[1]}.Tag"))
    return specs


def _references(params: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """resource type -> ids of the existing resources a launch's params name."""
    found: dict[str, list[str]] = {}
    for k, v in params.items():
        for pattern, rtype in _LAUNCH_REFERENCES:
            if v and pattern.search(k) and v[0] not in found.get(rtype, []):
                found.setdefault(rtype, []).append(v[0])
    return found


def _launch_requests(action: str, params: Mapping[str, list[str]], arn: Callable,
                     tags_of: Callable, launch_template_id_of: Callable | None,
                     template_params: Callable | None) -> list[Request]:
    """RunInstances / CreateFleet: the new instance, volume and network interface (with the
    tags requested for each type), the existing resources the params name, the tagging on
    create, and ec2:LaunchTemplate on every request of the call."""
    specs = _tag_specs(params)
    if action == "CreateFleet":  # one launch per launch-template config
        groups: dict[str, dict[str, list[str]]] = {}
        for k, v in params.items():
            m = re.match(r"LaunchTemplateConfigs\.(\d+)\.", k)
            if m:
                groups.setdefault(m[1], {})[k[m.end():]] = v
        launches = [groups[n] for n in sorted(groups, key=int)] or [{}]
    else:
        launches = [params]
    out: list[Request] = []
    seen: set[tuple[str, str, str]] = set()

    def add(req: Request) -> None:
        mark = (req.action, req.resource, repr(sorted(req.context.items())))
        if mark not in seen:
            seen.add(mark)
            out.append(req)

    for launch in launches:
        lt = (_first(launch, "LaunchTemplate.LaunchTemplateId")
              or _first(launch, "LaunchTemplateSpecification.LaunchTemplateId"))
        name = (_first(launch, "LaunchTemplate.LaunchTemplateName")
                or _first(launch, "LaunchTemplateSpecification.LaunchTemplateName"))
        if not lt and name:
            lt = (launch_template_id_of(name) if launch_template_id_of else None) or name
        template = dict(template_params(lt)) if template_params and lt else {}
        tagged = _tag_specs(template)
        for rtype, tags in specs.items():
            tagged[rtype] = {**tagged.get(rtype, {}), **tags}
        references = {**_references(template), **_references(launch)}
        base = {"ec2:LaunchTemplate": arn("launch-template", lt)} if lt else {}
        for rtype in ("instance", "volume", "network-interface"):
            add(Request("ec2:RunInstances", arn(rtype, "*"),
                        {**base, **_request_tags(tagged.get(rtype, {}))}))
        existing = [("launch-template", lt)] if lt else []
        existing += [(rtype, rid) for rtype, ids in references.items() for rid in ids]
        for rtype, rid in existing:
            add(Request("ec2:RunInstances", arn(rtype, rid),
                        {**base, **_resource_tags(tags_of(rid))}))
        for rtype, tags in tagged.items():
            if tags and (rtype != "fleet" or action == "CreateFleet"):
                add(Request("ec2:CreateTags", arn(rtype, "*"),
                            {**base, "ec2:CreateAction": action, **_request_tags(tags)}))
        if action == "CreateFleet":
            add(Request("ec2:CreateFleet", arn("fleet", "*"),
                        {**base, **_request_tags(specs.get("fleet", {}))}))
    return out
