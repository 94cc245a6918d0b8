"""AWS Signature Version 4 for the node session's requests (the standard library only).

As AWS specifies it (IAM user guide, "Create a signed AWS API request"), for requests without
a query string: the canonical request, the string to sign over its hash, and a key derived
from the secret by date, region and service. botocore signs the same way; the local cloud's
control plane checks every request with botocore's signer.
"""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str = ""
    expires: float = 0.0     # time.time() when they stop working; 0 = never


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    return _hmac(_hmac(_hmac(key, region), service), "aws4_request")


def canonical_uri(path: str, service: str) -> str:
    """The path as sent (already percent-encoded); every service but S3 encodes it again."""
    return path if service == "s3" else quote(path, safe="/~")


def sign(method: str, host: str, path: str, headers: dict, payload_hash: str,
         creds: Credentials, region: str, service: str, amz_date: str) -> dict:
    """The request's headers plus Host, X-Amz-Date, X-Amz-Security-Token (with a session
    token) and Authorization; every header passed in is signed. `amz_date` is
    YYYYMMDDTHHMMSSZ."""
    out = {**headers, "Host": host, "X-Amz-Date": amz_date}
    if creds.token:
        out["X-Amz-Security-Token"] = creds.token
    canon = {k.lower(): " ".join(str(v).split()) for k, v in out.items()}
    names = sorted(canon)
    signed = ";".join(names)
    request = "\n".join([method, canonical_uri(path, service), "",
                         "".join(f"{n}:{canon[n]}\n" for n in names), signed, payload_hash])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope,
                         hashlib.sha256(request.encode()).hexdigest()])
    key = signing_key(creds.secret_key, amz_date[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"{ALGORITHM} Credential={creds.access_key}/{scope}, "
                            f"SignedHeaders={signed}, Signature={signature}")
    return out
