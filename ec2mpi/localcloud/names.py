"""The local cloud's VPC resolver: instance names resolve inside nodes, as in a real VPC.

A VPC's Amazon-provided DNS (VPC base + 2) answers `ip-A-B-C-D.ec2.internal` (us-east-1) or
`ip-A-B-C-D.REGION.compute.internal` for its instances, and nodes search that domain so the
short hostname resolves too. MPI needs exactly this (getaddrinfo of gethostname()). This server
is authoritative for those names only and NEVER forwards: anything else is REFUSED, so a node
can never reach the outside world's DNS through it. Stdlib only; RFC 1035 wire format.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
import struct
import threading
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger(__name__)

TTL = 30  # small: local IPs are recycled as soon as a node terminates
A, PTR, ANY = 1, 12, 255
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
_SHORT = re.compile(r"ip-([0-9]{1,3})-([0-9]{1,3})-([0-9]{1,3})-([0-9]{1,3})")
_REVERSE = ".in-addr.arpa"


def domain(region: str) -> str:
    """The DHCP-options domain of the Amazon-provided DNS in `region`."""
    region = region.lower()
    return "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"


def private_dns_names(ip: str, region: str) -> list[str]:
    """[fully qualified private DNS name, short hostname] that EC2 gives an instance at `ip`."""
    short = "ip-" + str(ipaddress.IPv4Address(ip)).replace(".", "-")
    return [f"{short}.{domain(region)}", short]


def _octets_ip(octets) -> str | None:
    """Dotted quad from four decimal strings, or None unless each is canonical (no 010, <256)."""
    if len(octets) != 4 or any(not o.isascii() or not o.isdigit() or o != str(int(o))
                               or int(o) > 255 for o in octets):
        return None
    return ".".join(octets)


def ip_from_name(qname: str, region: str) -> str | None:
    """The IP behind a short or fully qualified instance name of `region`, else None."""
    name = qname.lower().removesuffix(".").removesuffix("." + domain(region))
    match = _SHORT.fullmatch(name)
    return _octets_ip(match.groups()) if match else None


def _in_zone(name: str) -> bool:
    """Names the VPC resolver owns (answers NXDOMAIN for) rather than would forward."""
    dotted = "." + name
    if dotted.endswith((".ec2.internal", ".compute.internal")):
        return True
    if not name.endswith(_REVERSE):
        return "." not in name and name.startswith("ip-")
    top = name[:-len(_REVERSE)].split(".")[::-1] + [""]  # the RFC 1918 zones, where VPCs live
    return top[0] == "10" or top[:2] == ["192", "168"] or (
        top[0] == "172" and top[1] in {str(n) for n in range(16, 32)})


def resolv_conf(nameserver: str, region: str) -> str:
    """A node's /etc/resolv.conf: the VPC resolver, its search domain, and fail-fast timeouts."""
    return (f"# ec2mpi local cloud: the VPC's Amazon-provided DNS\n"
            f"nameserver {nameserver}\n"
            f"search {domain(region)}\n"
            f"options timeout:1 attempts:2\n")


class Query(NamedTuple):
    id: int
    flags: int
    labels: list      # raw labels, original case (echoed back in the question)
    qtype: int
    qclass: int


def read_name(msg: bytes, off: int) -> tuple[list, int]:
    """(labels, offset after the name). Pointers must point backwards, so loops cannot happen."""
    labels, end, total = [], None, 0
    while True:
        if off >= len(msg):
            raise ValueError("name runs past the message")
        n = msg[off]
        if n & 0xC0 == 0xC0:
            target = ((n & 0x3F) << 8) | msg[off + 1] if off + 1 < len(msg) else off
            if target >= off:
                raise ValueError("truncated, forward or self pointer")
            end = off + 2 if end is None else end
            off = target
            continue
        if n & 0xC0:
            raise ValueError("reserved label type")
        off += 1
        if n == 0:
            return labels, (off if end is None else end)
        label = msg[off:off + n]
        total += n + 1
        if len(label) != n or total > 254 or b"." in label or not label.isascii():
            raise ValueError("bad label")
        labels.append(label)
        off += n


def encode_name(name) -> bytes:
    """Uncompressed wire form of a dotted name or a list of raw labels."""
    labels = name if isinstance(name, list) else [p.encode("ascii") for p in name.split(".") if p]
    return b"".join(bytes([len(lbl)]) + lbl for lbl in labels) + b"\0"


def parse_query(msg: bytes) -> Query:
    """The single question of a query; ValueError for anything else (responses, qdcount != 1).

    Responses are refused too so that two servers can never loop answering each other."""
    if len(msg) < 12:
        raise ValueError("short header")
    qid, flags, qdcount = struct.unpack("!3H", msg[:6])
    if flags & 0x8000 or qdcount != 1:
        raise ValueError("not a single-question query")
    labels, off = read_name(msg, 12)
    if off + 4 > len(msg):
        raise ValueError("truncated question")
    qtype, qclass = struct.unpack("!2H", msg[off:off + 4])
    return Query(qid, flags, labels, qtype, qclass)  # extra sections (e.g. EDNS OPT) ignored


def build_response(q: Query, rcode: int, answers=()) -> bytes:
    """QR, AA (only when we own the answer), opcode and RD copied, RA=0: we do not recurse."""
    aa = 0x0400 if rcode in (NOERROR, NXDOMAIN) else 0
    flags = 0x8000 | (q.flags & 0x7800) | aa | (q.flags & 0x0100) | rcode
    out = [struct.pack("!6H", q.id, flags, 1, len(answers), 0, 0),
           encode_name(q.labels), struct.pack("!2H", q.qtype, q.qclass)]
    for rtype, rdata in answers:  # owner name: a pointer to the question's name at offset 12
        out.append(struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, TTL, len(rdata)) + rdata)
    return b"".join(out)


def resolve(name: str, qtype: int, alive: Callable[[str], bool], region: str):
    """(rcode, [(rtype, rdata)]) for a lower-case name without the trailing dot."""
    ip = ip_from_name(name, region)
    if ip is not None:
        if not alive(ip):
            return NXDOMAIN, []
        return NOERROR, ([(A, socket.inet_aton(ip))] if qtype in (A, ANY) else [])  # else NODATA
    ip = _octets_ip(name[:-len(_REVERSE)].split(".")[::-1]) if name.endswith(_REVERSE) else None
    if ip is not None and alive(ip):  # PTR: D.C.B.A.in-addr.arpa
        fqdn = private_dns_names(ip, region)[0]
        return NOERROR, ([(PTR, encode_name(fqdn))] if qtype in (PTR, ANY) else [])
    return (NXDOMAIN if _in_zone(name) else REFUSED), []


def answer(msg: bytes, alive: Callable[[str], bool], region: str) -> bytes | None:
    """The response bytes for one query message, or None to drop it."""
    try:
        q = parse_query(msg)
    except ValueError:
        return None
    if q.flags & 0x7800:
        return build_response(q, NOTIMP)  # only standard QUERY
    if q.qclass not in (CLASS_IN, ANY):
        return build_response(q, REFUSED)
    name = b".".join(q.labels).decode("ascii").lower()  # read_name admits only ASCII
    try:
        rcode, answers = resolve(name, q.qtype, alive, region)
    except Exception:  # a failing alive() must not kill the server
        log.exception("resolving %r", name)
        rcode, answers = SERVFAIL, []
    return build_response(q, rcode, answers)


class NameServer:
    """UDP + TCP DNS on one (host, port), in daemon threads. It never opens an outbound socket."""

    def __init__(self, host: str, port: int, alive: Callable[[str], bool],
                 region: str = "us-east-1"):
        self.host, self.port, self.alive, self.region = host, port, alive, region
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._socks: set = set()      # listeners and open TCP clients, all closed by stop()
        self._threads: list = []

    def start(self) -> NameServer:
        for _ in range(50):  # port 0: the kernel's free UDP port may be taken for TCP; retry
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                udp.bind((self.host, self.port))
                tcp.bind((self.host, udp.getsockname()[1]))
                tcp.listen(64)
                break
            except OSError:
                udp.close()
                tcp.close()
                if self.port:
                    raise
        else:
            raise OSError("no port free for both UDP and TCP")
        self.port = udp.getsockname()[1]
        self._socks = {udp, tcp}
        self._threads = [_daemon(self._serve_udp, udp), _daemon(self._serve_tcp, tcp)]
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            socks, self._socks = list(self._socks), set()
        for sock in socks:  # shutdown wakes the threads blocked in recvfrom/accept/recv
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=1)

    def _serve_udp(self, sock) -> None:
        while not self._stopping.is_set():
            try:
                msg, peer = sock.recvfrom(4096)
                reply = answer(msg, self.alive, self.region)
                if reply is not None:
                    sock.sendto(reply, peer)
            except OSError:  # e.g. an ICMP error about one peer: keep serving the others
                if self._stopping.is_set():
                    return
            except Exception:  # a bug must cost one query, never the VPC's DNS
                log.exception("dns udp query")

    def _serve_tcp(self, listener) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # closed by stop(), or e.g. out of fds: do not spin
                self._stopping.wait(0.05)
                continue
            conn.settimeout(10)  # idle clients cannot pin a thread forever
            with self._lock:
                if self._stopping.is_set():
                    conn.close()
                    return
                self._socks.add(conn)
            _daemon(self._serve_conn, conn)

    def _serve_conn(self, conn) -> None:
        """Length-prefixed messages until EOF; anything malformed closes the connection."""
        try:
            while True:
                head = _recv_exact(conn, 2)
                msg = head and _recv_exact(conn, struct.unpack("!H", head)[0])
                reply = answer(msg, self.alive, self.region) if msg else None
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError as e:  # timeouts, resets: just drop this client
            log.debug("dns tcp client: %s", e)
        except Exception:
            log.exception("dns tcp query")
        finally:
            with self._lock:
                self._socks.discard(conn)
            conn.close()


def _daemon(target, sock) -> threading.Thread:
    thread = threading.Thread(target=target, args=(sock,), daemon=True, name="ec2mpi-dns")
    thread.start()
    return thread


def _recv_exact(conn, n: int) -> bytes:
    """n bytes, or b"" if the peer closed first."""
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data
