"""Test session set-up: the control plane is moto's server over HTTP(S), never in-process mocks.

Before anything imports boto3, the whole session is pinned to dummy credentials, no
metadata service and explicit endpoints, so nothing can reach a real account or
169.254.*.
"""
import os
import shutil
import signal
import subprocess
import uuid

import pytest

KEY_BUCKET = "ec2mpi-123456789012-us-east-1"   # the dummy account's key bucket

_SAFE_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    # AWS's check-IP service is never asked: the `checkip` fixture serves a stub; until it
    # runs (and in anything that escapes it) the URL points at a port that refuses.
    "EC2MPI_CHECKIP_URL": "http://127.0.0.1:9/",
    # Shorter intervals for the local cloud's agents and job supervisors (the defaults are
    # for real clusters; bench/recovery.py measures those): liveness and loss come sooner.
    "EC2MPI_WATCH_LIVENESS_EVERY": "5",
    "EC2MPI_WATCH_HEARTBEAT_CHECK_EVERY": "10",
    "EC2MPI_WATCH_LOST_AFTER": "30",
    "EC2MPI_WATCH_NOTICE_EVERY": "2",
    "EC2MPI_WATCH_AUTOSTOP_EVERY": "2",
    "EC2MPI_WATCH_HEAL_COOLDOWN": "5",
    "EC2MPI_JOB_LOSS_WAIT": "15",
    "EC2MPI_JOB_CHECKPOINT_GRACE": "20",
    "EC2MPI_JOB_HEAL_WAIT": "120",
}


def pytest_configure(config):
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        os.environ.pop(var, None)
    os.environ.update(_SAFE_ENV)
    # A suite started in the background by a non-interactive shell (`cmd &`) inherits SIGINT
    # ignored, and so would every CLI it starts: the Ctrl-C tests would hang instead of
    # testing anything. Children get the default back from a handled SIGINT here.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class CheckIpStub:
    """Stands in for https://checkip.amazonaws.com/: answers `reply` (a documentation address
    by default), or nothing at all when `reply` is None."""

    def __init__(self):
        import http.server
        import threading
        stub = self
        self.reply = "198.51.100.23"
        self.requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                stub.requests += 1
                if stub.reply is None:
                    self.close_connection = True
                    return
                body = (stub.reply + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="session", autouse=True)
def host_accounts_intact():
    """A tripwire: nodes of the local cloud share the host's /etc, and agents and tests add
    and remove users there. The host's own accounts must survive the whole session."""
    import pwd
    before = {p.pw_name for p in pwd.getpwall() if p.pw_uid < 1000}
    yield
    missing = before - {p.pw_name for p in pwd.getpwall()}
    assert not missing, f"the session removed host accounts from /etc/passwd: {sorted(missing)}"


@pytest.fixture(scope="session", autouse=True)
def checkip():
    """Every test (and every process it starts) asks this stub for 'your public address'."""
    stub = CheckIpStub()
    os.environ["EC2MPI_CHECKIP_URL"] = stub.url
    yield stub
    stub.server.shutdown()
    stub.reply = "198.51.100.23"


@pytest.fixture(scope="session")
def consoles(tmp_path_factory):
    """Where the control plane reads instance consoles (ID/console.log), as the local cloud
    reads what its nodes write."""
    return tmp_path_factory.mktemp("consoles")


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory, consoles):
    """One moto server process for the session, with its endpoint exported to every client."""
    from ec2mpi.localcloud.controlplane import start
    cp = start(tmp_path_factory.mktemp("controlplane"), consoles=consoles)
    os.environ["AWS_ENDPOINT_URL"] = cp.endpoint
    if cp.ca_path:
        os.environ["AWS_CA_BUNDLE"] = cp.ca_path
    yield cp
    cp.stop()


@pytest.fixture
def aws(controlplane):
    """A fresh AwsSession against the control plane."""
    from ec2mpi.aws.session import AwsSession

    return AwsSession(
        region="us-east-1", endpoint_url=controlplane.endpoint, ca_bundle=controlplane.ca_path
    )


@pytest.fixture
def stored_keys(aws):
    """store(name, owner=None): a fresh cluster keypair in the account's key bucket (made if
    missing), as `create` leaves it before launch; returns the keys."""
    from ec2mpi.aws.keystore import KeyStore
    from ec2mpi.keys import ClusterKeys

    def store(name, owner=None):
        s3 = aws.client("s3")
        try:
            s3.create_bucket(Bucket=KEY_BUCKET)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        keys = ClusterKeys.generate(name)
        KeyStore(aws, bucket=KEY_BUCKET, owner=owner).put_keys(name, keys)
        return keys
    return store


@pytest.fixture
def cluster_name():
    """A unique cluster name per test: the moto server is shared across the session."""
    return "t" + uuid.uuid4().hex[:10]


def have_root_namespaces() -> str:
    """Empty string if namespace tests can run here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (network/UTS/mount namespaces, veths and sshd per node)"
    for tool in ("ip", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs '{tool}' (apt-get install iproute2 util-linux)"
    if not os.path.exists("/usr/sbin/sshd"):
        return "needs sshd (apt-get install openssh-server)"
    probe = subprocess.run(
        ["unshare", "--net", "--uts", "--mount", "true"], check=False, capture_output=True
    )
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.decode().strip()}"
    return ""


@pytest.fixture(scope="session", autouse=True)
def local_cloud_state():
    """The suite's local cloud starts from nothing: a state directory that does not exist yet
    (under /var/tmp, since nodes hide /tmp), so its node image is built from scratch too,
    unless EC2MPI_LOCAL_STATE names one. The suite stops the local cloud if it started it."""
    import tempfile
    from pathlib import Path
    made = None
    if os.geteuid() == 0 and not os.environ.get("EC2MPI_LOCAL_STATE"):
        made = Path(tempfile.mkdtemp(prefix="ec2mpi-test-", dir="/var/tmp")) / "state"
        os.environ["EC2MPI_LOCAL_STATE"] = str(made)
    from ec2mpi.localcloud import control
    was_up = os.geteuid() == 0 and control.status() is not None
    yield {"fresh": made, "existed_before": bool(made and made.exists())}
    if os.geteuid() == 0 and not was_up and control.status() is not None:
        control.down()
    if made is not None:
        shutil.rmtree(made.parent, ignore_errors=True)
