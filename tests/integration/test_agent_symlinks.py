"""The root agent never follows a symlink the cluster user planted (issue "Trust boundaries",
item 2): boot's steps run in a sandbox root with a real throwaway user, whose home and shared
directory hold links to root-owned victims; afterwards no victim changed (owner, mode,
contents) and the legitimate files are in place, owned by the user."""

import errno
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from ec2mpi.agent import asuser, safefiles
from ec2mpi.agent.boot import (
    AgentParams,
    AgentPaths,
    ensure_user,
    install_keys,
    install_mpi_env,
    mount_shared,
)
from ec2mpi.agent.hostfile import write_hostfiles
from ec2mpi.aws.registry import Node
from ec2mpi.keys import ClusterKeys


def _root_reason():
    if os.geteuid() != 0:
        return "dropping to a real user needs root (CI runs as root)"
    if not shutil.which("useradd"):
        return "needs useradd (apt-get install passwd)"
    return ""


pytestmark = pytest.mark.skipif(bool(_root_reason()), reason=_root_reason() or "n/a")


class Sandbox:
    """An EC2MPI_ROOT-style root with a real cluster user; `plant` makes links as the user."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="ec2mpi-links-"))
        os.chmod(self.root, 0o755)      # the user must be able to reach its home
        self.paths = AgentPaths(self.root)
        self.user = "e2l" + uuid.uuid4().hex[:8]
        self.params = AgentParams(cluster="links", region="us-east-1", bucket="b", table="t",
                                  version="0", wheel_key="k", storage="efs",
                                  storage_id="fs-12345678", shared_path="/shared",
                                  user=self.user, prefix="/opt/ec2mpi", role="master")
        self.paths.etc.mkdir(parents=True)             # the stub's agent.json lives there
        ensure_user(self.user, self.paths)
        pw = pwd.getpwnam(self.user)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.home = self.paths.home(self.user)
        self.shared = self.paths.shared(self.params)
        self.shared.mkdir()
        os.chown(self.shared, self.uid, self.gid)       # what the mount hook would leave
        self.hook = self.root / "mount-hook"
        self.hook.write_text("#!/bin/sh\nexit 0\n")
        self.hook.chmod(0o755)

    def plant(self, link: Path, target) -> None:
        """A symlink owned by the user, as the user would make it."""
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target, link)
        os.lchown(link, self.uid, self.gid)

    def victim_dir(self, name: str, mode: int) -> Path:
        d = self.root / name
        d.mkdir()
        (d / "README").write_text("root's own\n")
        os.chmod(d / "README", 0o440)
        os.chmod(d, mode)
        return d

    def victim_file(self, name: str, text: str, mode: int) -> Path:
        f = self.root / name
        f.write_text(text)
        os.chmod(f, mode)
        return f

    def outside(self) -> dict:
        """Everything in the sandbox but the user's home, the shared dir and /etc/ec2mpi
        (root's own, written on purpose): path -> (type, uid, gid, mode, contents)."""
        skip = {self.home, self.shared, self.paths.etc}
        found = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
            for name in dirnames + filenames:
                p = Path(dirpath, name)
                st = os.lstat(p)
                data = p.read_bytes() if stat.S_ISREG(st.st_mode) else (
                    os.readlink(p) if stat.S_ISLNK(st.st_mode) else None)
                found[str(p)] = (stat.S_IFMT(st.st_mode), st.st_uid, st.st_gid,
                                 stat.S_IMODE(st.st_mode), data)
        st = os.lstat(self.root)
        found[str(self.root)] = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
        return found

    def owned_regular(self, path: Path, mode: int) -> bool:
        st = os.lstat(path)
        return (stat.S_ISREG(st.st_mode) and st.st_uid == self.uid
                and stat.S_IMODE(st.st_mode) == mode)

    def close(self):
        subprocess.run(["userdel", "-f", self.user], check=False, capture_output=True)
        subprocess.run(["rm", "-f", f"/var/mail/{self.user}"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def box():
    sandbox = Sandbox()
    yield sandbox
    sandbox.close()


def _nodes():
    return [Node("i-1", "master", "10.0.0.1", "h1", 4, state="ready"),
            Node("i-2", "worker", "10.0.0.2", "h2", 2, state="ready")]


def _boot_steps(box, keys):
    """The boot steps that write into the home and the shared dir, then the master's
    hostfile writer (as the watcher calls it)."""
    install_keys(box.params, box.paths, keys)
    mount_shared(box.params, box.paths, str(box.hook))
    install_mpi_env(box.params, box.paths, local=True)
    return write_hostfiles(_nodes(), box.paths.hostfile_dirs(box.params))


def test_planted_links_lead_nowhere_and_the_files_are_installed(box, caplog):
    etc_victim = box.victim_dir("etc-victim", 0o755)
    sudoers = box.victim_dir("sudoers.d-victim", 0o750)
    shadow = box.victim_file("shadow-victim", "root:$6$secret:19000::::::\n", 0o600)
    somewhere = box.victim_file("somewhere", "not the user's\n", 0o644)
    box.plant(box.home / ".ssh", etc_victim)
    box.plant(box.home / ".bashrc", shadow)
    box.plant(box.home / ".profile", box.root / "somewhere")
    box.plant(box.shared / ".ec2mpi", sudoers)
    before = box.outside()
    keys = ClusterKeys.generate("links")

    with caplog.at_level(logging.WARNING):
        text = _boot_steps(box, keys)

    assert box.outside() == before, "something outside the home and the shared dir changed"
    assert sorted(os.listdir(etc_victim)) == ["README"] and sorted(os.listdir(sudoers)) == [
        "README"]
    assert shadow.read_text().startswith("root:$6$secret") and somewhere.exists()
    # ~/.ssh: a real 0700 directory of the user with the keys
    ssh = box.home / ".ssh"
    st = os.lstat(ssh)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == box.uid and stat.S_IMODE(st.st_mode) == 0o700
    assert (ssh / "id_ed25519").read_bytes() == keys.identity.private_openssh
    assert box.owned_regular(ssh / "id_ed25519", 0o600)
    assert box.owned_regular(ssh / "id_ed25519.pub", 0o644)
    assert box.owned_regular(ssh / "authorized_keys", 0o600)
    assert box.owned_regular(ssh / "config", 0o600)
    assert f"IdentityFile {ssh / 'id_ed25519'}" in (ssh / "config").read_text()
    # .bashrc / .profile: fresh user files with the block, nothing of the links' targets
    for name in (".bashrc", ".profile"):
        assert box.owned_regular(box.home / name, 0o644)
        body = (box.home / name).read_text()
        assert body.startswith("# >>> ec2mpi") and "secret" not in body and "not the" not in body
    # the shared copy of the hostfiles: a real directory of the user
    shared_dir = box.shared / ".ec2mpi"
    st = os.lstat(shared_dir)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == box.uid
    assert sorted(os.listdir(shared_dir)) == ["hostfile", "hostfile.mpich"]
    assert (shared_dir / "hostfile").read_text() == text == "10.0.0.1 slots=4\n10.0.0.2 slots=2\n"
    assert box.owned_regular(shared_dir / "hostfile", 0o644)
    # root's own files stay root's
    for f in ("hostfile", "hostfile.mpich", "ssh_host_ed25519_key", "ssh_known_hosts"):
        assert os.lstat(box.paths.etc / f).st_uid == 0
    assert stat.S_IMODE(os.lstat(box.paths.host_key).st_mode) == 0o600
    # and the log says what was replaced
    said = caplog.text
    assert "~/.ssh was a symlink" in said and "~/.bashrc was a symlink" in said
    assert f"replaced the symlink {shared_dir}" in said


def test_links_planted_after_a_good_boot_are_replaced_on_the_next_boot(box):
    """Boot runs again at every agent start: the second run meets the user's links."""
    keys = ClusterKeys.generate("links")
    (box.home / ".bashrc").write_text("alias ll='ls -l'\n")
    _boot_steps(box, keys)
    assert "alias ll=" in (box.home / ".bashrc").read_text()     # the user's lines are kept
    sudoers = box.victim_dir("sudoers.d-victim", 0o750)
    shutil.rmtree(box.shared / ".ec2mpi")
    box.plant(box.shared / ".ec2mpi", sudoers)
    shutil.rmtree(box.home / ".ssh")
    box.plant(box.home / ".ssh", box.root / "not-there")      # dangling: root would mkdir it
    before = box.outside()

    _boot_steps(box, keys)

    assert box.outside() == before and os.listdir(sudoers) == ["README"]
    assert not (box.root / "not-there").exists()
    assert stat.S_ISDIR(os.lstat(box.home / ".ssh").st_mode)
    assert (box.home / ".ssh" / "authorized_keys").read_bytes() == keys.identity.public_openssh
    assert stat.S_ISDIR(os.lstat(box.shared / ".ec2mpi").st_mode)
    assert (box.shared / ".ec2mpi" / "hostfile").exists()


def test_a_file_in_place_of_ssh_fails_the_step_clearly(box):
    """What cannot be replaced safely fails the step with a message that says why (the boot
    then reports it in boot.status); nothing outside changes."""
    (box.home / ".ssh").write_text("not a directory\n")
    os.chown(box.home / ".ssh", box.uid, box.gid)
    before = box.outside()
    with pytest.raises(OSError) as err:
        install_keys(box.params, box.paths, ClusterKeys.generate("links"))
    assert f"as user {box.user}" in str(err.value) and ".ssh is not a directory" in str(err.value)
    assert box.outside() == before


def test_a_fifo_in_place_of_bashrc_does_not_hang_the_boot(box):
    """Reading ~/.bashrc used to block forever on a FIFO (the boot never ended)."""
    (box.home / ".bashrc").unlink(missing_ok=True)
    os.mkfifo(box.home / ".bashrc")
    os.chown(box.home / ".bashrc", box.uid, box.gid)

    def hung(*_):
        raise TimeoutError("install_mpi_env blocked on the FIFO")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        install_mpi_env(box.params, box.paths, local=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert box.owned_regular(box.home / ".bashrc", 0o644)


def test_root_files_are_never_written_where_the_user_has_a_say(box):
    """install_root refuses a directory the user controls; the hostfile writer drops to the
    user there, and a write the user may not do fails (and is skipped for a shared copy)."""
    with pytest.raises(PermissionError, match=f"belongs to uid {box.uid}"):
        safefiles.install_root(box.shared / ".ec2mpi" / "x", b"x", 0o644)
    locked = box.victim_dir("locked", 0o755)          # root's, inside nothing of the user's
    box.plant(box.shared / "elsewhere", locked)
    with pytest.raises(OSError) as err:
        safefiles.write_files(box.shared / "elsewhere" / "sub", {"f": "x"})
    assert err.value.errno == errno.EACCES and f"as user {box.user}" in str(err.value)
    assert os.listdir(locked) == ["README"]
    text = write_hostfiles(_nodes(), [box.paths.etc, box.shared / "elsewhere" / "sub"])
    assert text.startswith("10.0.0.1") and os.listdir(locked) == ["README"]


def test_walk_trusts_only_root_and_refuses_shared_root_dirs(box):
    w = safefiles.walk(box.home / ".ssh" / "config")
    assert (w.trusted, w.rest[0], w.owner) == (str(box.home.parent), box.user, box.uid)
    link = box.root / "rootlink"
    os.symlink(box.paths.etc, link)                     # root's own link: followed
    w = safefiles.walk(link / "hostfile")
    assert (w.trusted, w.rest, w.owner, w.missing) == (
        str(box.paths.etc), ["hostfile"], 0, True)
    open_dir = box.root / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)                           # others may rename root's entries
    with pytest.raises(PermissionError, match="writable by other users"):
        safefiles.walk(open_dir / "x")
    os.chmod(open_dir, 0o1777)                          # sticky: their entries are theirs
    assert safefiles.walk(open_dir / "x").missing


def test_run_as_drops_everything_and_reports_errors(box):
    acct = asuser.account(box.user)
    ids = asuser.run_as(acct, "ids", lambda: [os.getuid(), os.geteuid(), os.getgid(),
                                               sorted(os.getgroups())])
    assert ids[:3] == [box.uid, box.uid, box.gid] and 0 not in ids[3]
    with pytest.raises(asuser.AsUserError) as err:
        asuser.run_as(acct, "reading the victim", Path("/etc/shadow").read_text)
    assert err.value.errno == errno.EACCES
    assert str(err.value).startswith(f"as user {box.user}: reading the victim: Permission denied")
    with pytest.raises(asuser.AsUserError, match="boom"):
        asuser.run_as(acct, "x", lambda: (_ for _ in ()).throw(ValueError("boom")))
