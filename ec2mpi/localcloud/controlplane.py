"""The local cloud's AWS control plane: moto's server, run as its own process.

CONTRACT: `start(state_dir, host)` returns a running ControlPlane whose `endpoint`
(HTTPS, verified with `ca_path`) and `http_endpoint` (plain HTTP, for proving the
TLS-only bucket policy) serve the same moto backends. `python -m
ec2mpi.localcloud.controlplane --host H --state-dir D` serves until SIGTERM and writes
D/controlplane.json once ready.

TLS: a local CA (EC P-256 key + self-signed cert, `ca-key.pem` / `ca.pem` in the state
dir) is created on first start and reused afterwards, so `ca.pem` stays valid for the
life of the state dir. Each start issues a fresh server certificate from it (SANs: the
bind IP, 127.0.0.1, ::1, localhost). Both listeners serve ONE moto WSGI app, wrapped by
`fidelity.RequestContextMiddleware` (which tells bucket policies whether the request
came over TLS); `fidelity.apply()` and `fidelity.backend_app_factory` patch moto in
this process only.
"""
from __future__ import annotations

import argparse
import datetime
import io
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class ControlPlaneInfo:
    endpoint: str        # the endpoint clients use: HTTPS, verified with ca_path
    http_endpoint: str   # plain HTTP, same backends
    ca_path: str | None  # PEM CA bundle that verifies `endpoint`
    pid: int


class ControlPlane:
    def __init__(self, proc: subprocess.Popen, info: ControlPlaneInfo):
        self.proc, self.info = proc, info

    @property
    def endpoint(self) -> str:
        return self.info.endpoint

    @property
    def http_endpoint(self) -> str:
        return self.info.http_endpoint

    @property
    def ca_path(self) -> str | None:
        return self.info.ca_path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
SERVER_CERT, SERVER_KEY = "server.pem", "server-key.pem"
# Services every --local run touches: their moto apps are built in the background once the
# control plane is up, so that the first EC2 call does not pay ~1.5 s of imports.
WARM_SERVICES = ("s3", "dynamodb", "sts", "iam", "ssm", "efs", "ec2")  # cheap ones first


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def ensure_tls(state_dir: Path, host: str) -> tuple[Path, Path, Path]:
    """(ca.pem, server.pem, server-key.pem) under state_dir: the CA is created once and
    reused; the server certificate is issued afresh for `host` (cheap: EC P-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert_path, ca_key_path = state_dir / CA_CERT, state_dir / CA_KEY
    now = datetime.datetime.now(datetime.timezone.utc)
    pem = serialization.Encoding.PEM
    ca_key = ca_cert = None
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        if (ca_cert.public_key().public_numbers() != ca_key.public_key().public_numbers()
                or _not_after(ca_cert) < now + datetime.timedelta(days=30)):
            ca_key = ca_cert = None  # torn write or about to expire: start a new CA
    if ca_cert is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ec2mpi local cloud"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"ec2mpi local CA {now:%Y%m%d%H%M%S}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_atomic(ca_key_path, ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()), 0o600)
        _write_atomic(ca_cert_path, ca_cert.public_bytes(pem))

    key = ec.generate_private_key(ec.SECP256R1())
    ips = {ipaddress.ip_address(h) for h in (host, "127.0.0.1", "::1") if _is_ip(h)}
    san = [x509.DNSName("localhost")] + [x509.IPAddress(ip) for ip in sorted(ips, key=str)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = state_dir / SERVER_CERT, state_dir / SERVER_KEY
    _write_atomic(key_path, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()), 0o600)
    _write_atomic(cert_path, cert.public_bytes(pem) + ca_cert.public_bytes(pem))  # full chain
    return ca_cert_path, cert_path, key_path


def _not_after(cert) -> datetime.datetime:
    if hasattr(cert, "not_valid_after_utc"):  # cryptography >= 42
        return cert.not_valid_after_utc
    return cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)


def _is_ip(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return False


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def start(state_dir: str | os.PathLike, host: str = "127.0.0.1", timeout: float = 30.0,
          enforce: bool = False, consoles: Path | None = None) -> ControlPlane:
    """With `enforce`, only credentials of the store in state_dir are accepted, and node
    role credentials are authorized by their role's policies (enforce.py). With `consoles`
    (the local cloud's nodes directory), GetConsoleOutput answers each instance's own
    console (NODES/ID/console.log), as EC2 does, instead of moto's fixed sample."""
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    info_path = state / "controlplane.json"
    info_path.unlink(missing_ok=True)
    log = open(state / "controlplane.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "ec2mpi.localcloud.controlplane", "--host", host,
                             "--state-dir", str(state)] + (["--enforce"] if enforce else [])
                            + (["--consoles", str(consoles)] if consoles else []),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"control plane exited ({proc.returncode}); see {state / 'controlplane.log'}"
            )
        if info_path.exists():
            return ControlPlane(proc, ControlPlaneInfo(**json.loads(info_path.read_text())))
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(
        f"control plane did not start in {timeout:.0f}s; see {state / 'controlplane.log'}"
    )


def _servers():
    """The two listener classes, built on werkzeug's threaded WSGI server (imported lazily:
    only the control-plane process needs werkzeug)."""
    from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

    class KeepAliveHandler(WSGIRequestHandler):
        """HTTP/1.1 keep-alive: clients reuse connections instead of a TCP and TLS handshake
        per request. werkzeug's own run_wsgi sends `Connection: close` on every response (and
        then waits 10 ms for stray input): each request of a booting node paid a handshake
        and, client side, a CA-bundle load (~45 ms of CPU with the system bundle). Here the
        request body is read whole (Content-Length, or chunked) before the app runs, and the
        response is buffered and sent with its exact Content-Length, so the next request on
        the connection starts exactly where this one ended."""
        protocol_version = "HTTP/1.1"
        timeout = 120   # an idle connection's thread ends (clients reconnect transparently)

        def run_wsgi(self) -> None:
            environ = self.make_environ()
            if environ.get("wsgi.input_terminated"):          # chunked: dechunked whole
                body = environ["wsgi.input"].read()
            else:
                body = self.rfile.read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
            environ.pop("werkzeug.socket", None)              # nothing may read past it
            started: list = []

            def start_response(status, headers, exc_info=None):
                started[:] = [status, headers]
                return lambda data: chunks.append(data)

            chunks: list = []
            try:
                result = self.server.app(environ, start_response)
                try:
                    chunks.extend(result)
                finally:
                    if hasattr(result, "close"):
                        result.close()
                status, headers = started
            except Exception:   # noqa: BLE001 - answer 500 and close, as werkzeug does
                self.log_error("error on request %s:\n%s", self.requestline,
                               traceback.format_exc())
                status, headers, chunks = "500 Internal Server Error", [], [b""]
                self.close_connection = True
            data = b"".join(chunks)
            code, _, reason = status.partition(" ")
            self.send_response(int(code), reason)
            given = {k.lower() for k, _ in headers}
            for key, value in headers:
                if key.lower() in ("connection", "transfer-encoding") or (
                        key.lower() == "content-length" and self.command != "HEAD"):
                    continue
                self.send_header(key, value)
            if self.command != "HEAD" and int(code) not in (204, 304) and int(code) >= 200:
                self.send_header("Content-Length", str(len(data)))
            elif self.command == "HEAD" and "content-length" not in given:
                self.send_header("Content-Length", "0")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            self.wfile.flush()

    class PlainServer(ThreadedWSGIServer):
        """TCP_NODELAY on every connection: werkzeug writes status, headers and body
        separately, and with Nagle + delayed ACKs a request took ~25 ms instead of ~10 ms.
        A listen backlog for a thousand nodes connecting at once (each agent keeps its own
        connection): with werkzeug's 128, connects overflowed it, waited for the kernel's SYN
        retransmits (1, 3, 7 s) and ran out of the client's 10 s connect timeout."""
        request_queue_size = 1024

        def __init__(self, host: str, app):
            super().__init__(host, 0, app, handler=KeepAliveHandler)

        def get_request(self):
            sock, addr = self.socket.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock, addr

    class TlsServer(PlainServer):
        """TLS set up per connection in the request's own thread, not in accept() as
        werkzeug would: a client that connects and stalls cannot block the listener."""

        def __init__(self, host: str, app, tls: ssl.SSLContext):
            super().__init__(host, app)
            self.tls = tls
            self.ssl_context = tls  # werkzeug then reports wsgi.url_scheme=https

        def get_request(self):
            sock, addr = super().get_request()
            return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

        def finish_request(self, request, client_address):
            try:
                request.settimeout(30)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError):  # plain HTTP on the TLS port, client rejects our CA, ...
                return
            super().finish_request(request, client_address)

    return PlainServer, TlsServer


def serve(host: str, state_dir: Path, enforce: bool = False,
          consoles: Path | None = None) -> None:
    import logging

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from ec2mpi.localcloud import fidelity

    if not os.environ.get("EC2MPI_CONTROLPLANE_ACCESS_LOG"):
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    fidelity.apply()
    fidelity.CONSOLES = consoles
    ca_path, cert_path, key_path = ensure_tls(state_dir, host)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_path, key_path)

    create_app = fidelity.backend_app_factory(create_backend_app)
    dispatcher = DomainDispatcherApplication(create_app)  # ONE app: same backends
    PlainServer, TlsServer = _servers()
    def app(secure: bool):
        inner = fidelity.RequestContextMiddleware(dispatcher, secure=secure)
        if not enforce:
            return inner
        from ec2mpi.localcloud.credentials import CredentialStore
        from ec2mpi.localcloud.enforce import Enforcer
        return Enforcer(inner, CredentialStore(state_dir))

    https = TlsServer(host, app(True), ctx)
    http = PlainServer(host, app(False))
    threads = [threading.Thread(target=srv.serve_forever, args=(0.1,), name=name, daemon=True)
               for srv, name in ((https, "https"), (http, "http"))]
    for t in threads:
        t.start()

    stopped = threading.Event()  # handlers before announcing readiness
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    info = ControlPlaneInfo(endpoint=_url("https", host, https.server_port),
                            http_endpoint=_url("http", host, http.server_port),
                            ca_path=str(ca_path.resolve()), pid=os.getpid())
    _write_atomic(state_dir / "controlplane.json", json.dumps(asdict(info)).encode())

    def warm_up():
        for service in WARM_SERVICES:
            try:
                app = create_app(service)
            except Exception:  # noqa: BLE001, S112
                continue
            with dispatcher.lock:
                dispatcher.app_instances.setdefault(service, app)

    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()

    parent = os.getppid()
    while not stopped.wait(1.0):  # an orphan (its owner died without stop()) leaves too
        if os.getppid() != parent:
            break
    stoppers = [threading.Thread(target=srv.shutdown) for srv in (https, http)]  # in parallel
    for t in stoppers:
        t.start()
    for t in stoppers + threads:
        t.join(5)
    try:  # leave no stale endpoint behind, unless a newer control plane already wrote its own
        if json.loads((state_dir / "controlplane.json").read_text()).get("pid") == os.getpid():
            (state_dir / "controlplane.json").unlink()
    except (OSError, ValueError):
        pass
    # Nothing to flush but our own streams: skip tearing down moto's module graph (~0.5 s).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--state-dir", required=True, type=Path)
    ap.add_argument("--enforce", action="store_true", help="accept only the store's keys; "
                    "authorize node roles by their policies")
    ap.add_argument("--consoles", type=Path, default=None,
                    help="nodes directory: GetConsoleOutput reads NODES/ID/console.log")
    args = ap.parse_args(argv)
    serve(args.host, args.state_dir, args.enforce, args.consoles)


if __name__ == "__main__":
    main()
