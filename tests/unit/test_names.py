"""The local VPC resolver: EC2's private names, RFC 1035 wire format, and a server that
answers only for its own zones (never forwarding), over real UDP and TCP sockets."""
import socket
import struct
import time

import pytest

from ec2mpi.localcloud import names
from ec2mpi.localcloud.names import (
    NameServer,
    ip_from_name,
    parse_query,
    private_dns_names,
    read_name,
    resolv_conf,
)

A, AAAA, PTR, CH = 1, 28, 12, 3
ALIVE = {"172.31.0.5", "10.1.2.3"}


# --- pure helpers -----------------------------------------------------------------------------

def test_private_dns_names_follow_ec2():
    assert private_dns_names("172.31.0.5", "us-east-1") == ["ip-172-31-0-5.ec2.internal",
                                                           "ip-172-31-0-5"]
    assert private_dns_names("10.1.2.3", "eu-west-1") == ["ip-10-1-2-3.eu-west-1.compute.internal",
                                                         "ip-10-1-2-3"]
    with pytest.raises(ValueError):
        private_dns_names("172.31.0.256", "us-east-1")


@pytest.mark.parametrize("qname, region", [
    ("ip-172-31-0-5", "us-east-1"), ("ip-172-31-0-5.", "us-east-1"),
    ("ip-172-31-0-5.ec2.internal", "us-east-1"), ("IP-172-31-0-5.EC2.Internal.", "us-east-1"),
    ("ip-172-31-0-5.eu-west-1.compute.internal", "eu-west-1"), ("ip-172-31-0-5", "eu-west-1"),
])
def test_ip_from_name_accepts_short_and_qualified_forms(qname, region):
    assert ip_from_name(qname, region) == "172.31.0.5"


@pytest.mark.parametrize("qname, region", [
    ("ip-172-31-0-5.ec2.internal", "eu-west-1"),                  # another region's domain
    ("ip-172-31-0-5.eu-west-1.compute.internal", "us-east-1"),
    ("ip-172-31-0-5.us-east-1.compute.internal", "us-east-1"),    # us-east-1 is ec2.internal
    ("ip-256-1-1-1", "us-east-1"), ("ip-01-1-1-1", "us-east-1"), ("ip-1-2-3", "us-east-1"),
    ("ip-1-2-3-4-5", "us-east-1"), ("ip-\uff11-2-3-4", "us-east-1"), ("ip-1-2-3-4..", "us-east-1"),
    ("pypi.org", "us-east-1"), ("ip-1-2-3-4.example.com", "us-east-1"), ("", "us-east-1"),
])
def test_ip_from_name_rejects_everything_else(qname, region):
    assert ip_from_name(qname, region) is None


@pytest.mark.parametrize("region, search", [("us-east-1", "ec2.internal"),
                                            ("ap-northeast-1", "ap-northeast-1.compute.internal")])
def test_resolv_conf_points_at_the_vpc_resolver_and_fails_fast(region, search):
    lines = [ln.split() for ln in resolv_conf("172.31.0.2", region).splitlines()
             if ln and not ln.startswith("#")]
    assert ["nameserver", "172.31.0.2"] in lines and ["search", search] in lines
    options = dict(o.split(":") for ln in lines if ln[0] == "options" for o in ln[1:])
    assert int(options["timeout"]) * int(options["attempts"]) <= 2
    assert [ln[0] for ln in lines].count("nameserver") == 1


def test_read_name_follows_backward_pointers_only():
    msg = bytes(12) + b"\x03ec2\x08internal\x00" + b"\x0bip-10-1-2-3\xc0\x0c" + b"\x00\x01"
    assert read_name(msg, 12) == ([b"ec2", b"internal"], 26)
    assert read_name(msg, 26) == ([b"ip-10-1-2-3", b"ec2", b"internal"], 40)
    bad = [
        bytes(12) + b"\xc0\x0c",                          # points at itself
        bytes(12) + b"\xc0\x0e\x00",                      # points forward
        bytes(12) + b"\x01a\xc0\x0c",                     # loop through an earlier label
        bytes(12) + b"\xc0",                              # truncated pointer
        bytes(12) + b"\x41abc\x00",                       # reserved label type
        bytes(12) + b"\x05ab\x00",                        # label runs past the end
        bytes(12) + b"\x03a.b\x00",                       # a dot inside a label
        bytes(12) + b"\x03\xff\xfe\xfd\x00",              # not ASCII
        bytes(12) + b"\x3f" + b"a" * 63 * 5 + b"\x00",  # longer than 255
        bytes(12) + b"\x03ec2",                           # no terminating root label
    ]
    for msg in bad:
        with pytest.raises(ValueError):
            read_name(msg, 12)


# --- over the wire ----------------------------------------------------------------------------

def query(name, qtype=A, qid=0x1234, rd=True, qclass=1, opcode=0):
    flags = (opcode << 11) | (0x0100 if rd else 0)
    return (struct.pack("!6H", qid, flags, 1, 0, 0, 0) + names.encode_name(name)
            + struct.pack("!2H", qtype, qclass))


def parse_response(msg):
    qid, flags, qd, an, ns, ar = struct.unpack("!6H", msg[:12])
    labels, off = read_name(msg, 12)
    qtype, qclass = struct.unpack("!2H", msg[off:off + 4])
    off += 4
    answers = []
    for _ in range(an):
        owner, off = read_name(msg, off)
        rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", msg[off:off + 10])
        rdata = msg[off + 10:off + 10 + rdlen]
        off += 10 + rdlen
        value = socket.inet_ntoa(rdata) if rtype == A else ".".join(
            lbl.decode() for lbl in read_name(msg, off - rdlen)[0])
        answers.append((b".".join(owner).decode(), rtype, rclass, ttl, value))
    return {"id": qid, "qr": bool(flags & 0x8000), "opcode": (flags >> 11) & 0xF,
            "aa": bool(flags & 0x0400), "tc": bool(flags & 0x0200), "rd": bool(flags & 0x0100),
            "ra": bool(flags & 0x0080), "rcode": flags & 0xF, "qd": qd, "ns": ns, "ar": ar,
            "question": (b".".join(labels).decode(), qtype, qclass), "answers": answers}


def udp(port, msg):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        s.sendto(msg, ("127.0.0.1", port))
        return parse_response(s.recvfrom(4096)[0])


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "server closed the connection early"
        data += chunk
    return data


def tcp_exchange(port, *msgs):
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"".join(struct.pack("!H", len(m)) + m for m in msgs))
        out = []
        for _ in msgs:
            (n,) = struct.unpack("!H", recv_exact(s, 2))
            out.append(parse_response(recv_exact(s, n)))
        return out


@pytest.fixture
def server():
    srv = NameServer("127.0.0.1", 0, ALIVE.__contains__, "us-east-1").start()
    yield srv
    srv.stop()


@pytest.fixture
def eu_server():
    srv = NameServer("127.0.0.1", 0, ALIVE.__contains__, "eu-west-1").start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("name", ["ip-172-31-0-5.ec2.internal", "ip-172-31-0-5",
                                  "IP-172-31-0-5.Ec2.Internal"])
def test_a_for_an_alive_instance(server, name):
    r = udp(server.port, query(name, qid=0xBEEF))
    assert r["id"] == 0xBEEF and r["qr"] and r["aa"] and r["rd"] and not r["ra"] and not r["tc"]
    assert r["rcode"] == names.NOERROR and r["question"] == (name, A, 1)  # case preserved
    assert r["answers"] == [(name, A, 1, names.TTL, "172.31.0.5")]
    assert 0 < names.TTL <= 60


def test_rd_is_copied_not_forced(server):
    assert not udp(server.port, query("ip-172-31-0-5", rd=False))["rd"]


@pytest.mark.parametrize("name", ["ip-172-31-0-9.ec2.internal", "ip-172-31-0-9",
                                  "ip-999-1-1-1.ec2.internal", "nonsense.ec2.internal",
                                  "ip-172-31-0-5.eu-west-1.compute.internal", "ec2.internal",
                                  "ip-nope", "9.0.31.172.in-addr.arpa", "x.3.2.1.10.in-addr.arpa"])
def test_nxdomain_for_dead_or_unparseable_names_in_our_zones(server, name):
    r = udp(server.port, query(name, PTR if name.endswith(".arpa") else A))
    assert r["rcode"] == names.NXDOMAIN and r["aa"] and r["answers"] == []


@pytest.mark.parametrize("qtype", [AAAA, 15, 16])  # AAAA, MX, TXT
def test_other_types_of_an_alive_name_are_nodata_not_errors(server, qtype):
    r = udp(server.port, query("ip-10-1-2-3.ec2.internal", qtype))
    assert r["rcode"] == names.NOERROR and r["aa"] and r["answers"] == []


def test_ptr_for_an_alive_instance(server, eu_server):
    r = udp(server.port, query("5.0.31.172.in-addr.arpa", PTR))
    assert r["rcode"] == names.NOERROR
    assert r["answers"] == [("5.0.31.172.in-addr.arpa", PTR, 1, names.TTL,
                             "ip-172-31-0-5.ec2.internal")]
    r = udp(eu_server.port, query("3.2.1.10.in-addr.arpa.", PTR))
    assert r["answers"][0][-1] == "ip-10-1-2-3.eu-west-1.compute.internal"


def test_other_regions_use_their_compute_internal_domain(eu_server):
    r = udp(eu_server.port, query("ip-10-1-2-3.eu-west-1.compute.internal"))
    assert r["rcode"] == names.NOERROR and r["answers"][0][-1] == "10.1.2.3"
    assert udp(eu_server.port, query("ip-10-1-2-3"))["answers"][0][-1] == "10.1.2.3"
    assert udp(eu_server.port, query("ip-10-1-2-3.ec2.internal"))["rcode"] == names.NXDOMAIN


@pytest.mark.parametrize("name, qtype", [
    ("pypi.org", A), ("amazonaws.com", A), ("ec2.us-east-1.amazonaws.com", A), ("", A),
    ("ip-10-1-2-3.example.com", A), ("8.8.8.8.in-addr.arpa", PTR), ("in-addr.arpa", PTR),
    ("3.2.1.10.in-addr.arpa.example", PTR), ("5.0.15.172.in-addr.arpa", PTR),
])
def test_everything_outside_our_zones_is_refused_never_forwarded(server, name, qtype):
    r = udp(server.port, query(name, qtype))
    assert r["rcode"] == names.REFUSED and not r["aa"] and r["answers"] == []


def test_non_query_opcodes_and_classes(server):
    assert udp(server.port, query("ip-10-1-2-3", opcode=2))["rcode"] == names.NOTIMP
    assert udp(server.port, query("ip-10-1-2-3", qclass=CH))["rcode"] == names.REFUSED


def test_edns_opt_record_is_tolerated(server):
    msg = bytearray(query("ip-10-1-2-3"))
    msg[10:12] = b"\x00\x01"  # ARCOUNT=1: an OPT pseudo-record, as resolvers with edns0 send
    r = udp(server.port, bytes(msg) + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")
    assert r["answers"][0][-1] == "10.1.2.3" and r["ar"] == 0


def test_tcp_on_the_same_port_and_pipelined(server):
    a, ptr, refused = tcp_exchange(server.port, query("ip-10-1-2-3", qid=1),
                                   query("3.2.1.10.in-addr.arpa", PTR, qid=2),
                                   query("pypi.org", qid=3))
    assert (a["id"], a["answers"][0][-1]) == (1, "10.1.2.3")
    assert (ptr["id"], ptr["answers"][0][-1]) == (2, "ip-10-1-2-3.ec2.internal")
    assert (refused["id"], refused["rcode"]) == (3, names.REFUSED)


JUNK = [b"", b"\x00", bytes(11), bytes(12), b"\xff" * 40,
        struct.pack("!6H", 7, 0x8000, 1, 0, 0, 0) + names.encode_name("ip-10-1-2-3") + b"\0\1\0\1",
        struct.pack("!6H", 7, 0, 2, 0, 0, 0) + names.encode_name("ip-10-1-2-3") + b"\0\1\0\1",
        struct.pack("!6H", 7, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",
        struct.pack("!6H", 7, 0, 1, 0, 0, 0) + names.encode_name("ip-10-1-2-3") + b"\0\1"]


def test_malformed_udp_is_dropped_and_the_server_survives(server):
    for junk in JUNK:
        with pytest.raises(ValueError):
            parse_query(junk)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        for junk in JUNK:
            s.sendto(junk, ("127.0.0.1", server.port))
        s.sendto(query("ip-10-1-2-3", qid=99), ("127.0.0.1", server.port))
        r = parse_response(s.recvfrom(4096)[0])  # the first (and only) reply is the good one
        assert r["id"] == 99 and r["answers"][0][-1] == "10.1.2.3"


@pytest.mark.parametrize("junk", [j for j in JUNK if j] + [b"\x00\x20abc"],
                         ids=lambda j: f"{len(j)}B")
def test_malformed_tcp_closes_the_connection_and_the_server_survives(server, junk):
    with socket.create_connection(("127.0.0.1", server.port), timeout=1) as s:
        s.sendall(junk if junk.startswith(b"\x00\x20") else struct.pack("!H", len(junk)) + junk)
        if junk.startswith(b"\x00\x20"):
            s.shutdown(socket.SHUT_WR)  # a length prefix promising more than ever arrives
        assert s.recv(100) == b""
    assert tcp_exchange(server.port, query("ip-10-1-2-3"))[0]["answers"][0][-1] == "10.1.2.3"


def test_a_failing_alive_check_is_servfail_not_a_dead_server():
    def alive(ip):
        raise RuntimeError("registry unavailable")
    srv = NameServer("127.0.0.1", 0, alive, "us-east-1").start()
    try:
        assert udp(srv.port, query("ip-10-1-2-3"))["rcode"] == names.SERVFAIL
        assert tcp_exchange(srv.port, query("ip-10-1-2-3"))[0]["rcode"] == names.SERVFAIL
        assert udp(srv.port, query("pypi.org"))["rcode"] == names.REFUSED
    finally:
        srv.stop()


def test_stop_is_prompt_and_frees_both_ports():
    srv = NameServer("127.0.0.1", 0, ALIVE.__contains__, "us-east-1").start()
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=1)  # an idle TCP client
    idle.sendall(struct.pack("!H", len(query("ip-10-1-2-3"))) + query("ip-10-1-2-3"))
    recv_exact(idle, struct.unpack("!H", recv_exact(idle, 2))[0])  # served; now it just idles
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 0.5
    assert all(not t.is_alive() for t in srv._threads)
    assert idle.recv(10) == b""
    idle.close()
    again = NameServer("127.0.0.1", srv.port, ALIVE.__contains__, "us-east-1").start()
    again.stop()
