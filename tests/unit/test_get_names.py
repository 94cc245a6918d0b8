"""`ec2mpi get DIR` does not trust the names a node lists (issue "Trust boundaries", item 3):
a fake SFTP server sends crafted names; nothing lands outside the destination. No network."""

import os
import stat
from types import SimpleNamespace

import pytest

from ec2mpi import remote
from ec2mpi.errors import CloudError, UserError

DIR, FILE = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644


class FakeSFTP:
    """Just what `remote.get` calls: stat, listdir_attr, get; a tree of dicts and bytes."""

    def __init__(self, tree: dict):
        self.tree = tree
        self.fetched = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def _node(self, path):
        node = self.tree
        for part in [p for p in path.split("/") if p]:
            if not isinstance(node, dict) or part not in node:
                raise FileNotFoundError(path)
            node = node[part]
        return node

    def stat(self, path):
        node = self._node(path)
        return SimpleNamespace(st_mode=DIR if isinstance(node, dict) else FILE,
                               st_size=0 if isinstance(node, dict) else len(node))

    def listdir_attr(self, path):
        return [SimpleNamespace(filename=name, st_mode=DIR if isinstance(v, dict) else FILE,
                                st_size=0 if isinstance(v, dict) else len(v))
                for name, v in self._node(path).items()]

    def get(self, remotepath, localpath):
        self.fetched.append(remotepath)
        with open(localpath, "wb") as f:      # what paramiko does: follows a local symlink
            f.write(self._node(remotepath))


class FakeClient:
    def __init__(self, sftp):
        self.sftp = sftp

    def open_sftp(self):
        return self.sftp


def _get(tree, local):
    sftp = FakeSFTP({"shared": {"out": tree}})
    return remote.get(FakeClient(sftp), "/shared/out", str(local)), sftp


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, fs in os.walk(root) for f in fs)


def test_a_normal_tree_is_copied(tmp_path):
    got, _ = _get({"a.txt": b"hello", "sub": {"b.bin": b"12345", "deeper": {}}}, tmp_path / "dst")
    assert got == 10 and _files(tmp_path / "dst") == ["a.txt", os.path.join("sub", "b.bin")]
    assert (tmp_path / "dst" / "sub" / "deeper").is_dir()


@pytest.mark.parametrize("name", ["../../.bashrc", "..", ".", "", "a/b", "/etc/passwd",
                                  "x\0y", "sub/../../x"])
def test_unsafe_names_from_the_node_are_refused(tmp_path, name):
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    (home / ".bashrc").write_text("mine\n")
    tree = {"fine.txt": b"ok", name: b"owned\n"}
    with pytest.raises(CloudError) as err:
        _get(tree, home / "work" / "dst")
    assert repr(name) in str(err.value) and "/shared/out" in str(err.value)
    assert (home / ".bashrc").read_text() == "mine\n"
    assert _files(tmp_path) == [os.path.join("home", ".bashrc")]     # not even fine.txt


def test_unsafe_names_deeper_in_the_tree_stop_the_copy_there(tmp_path):
    with pytest.raises(CloudError, match=r"'\.\.' in /shared/out/sub"):
        _get({"sub": {"..": {"..": {"evil": b"x"}}}}, tmp_path / "dst")
    assert _files(tmp_path) == []


def test_a_local_symlink_to_a_directory_outside_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(outside, dst / "sub")
    with pytest.raises(UserError, match="leads outside the destination"):
        _get({"sub": {"f": b"x"}}, dst)
    assert list(outside.iterdir()) == []


def test_a_local_symlink_to_a_file_outside_is_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    dst = tmp_path / "dst"
    dst.mkdir()
    os.symlink(victim, dst / "f")
    os.symlink(tmp_path / "nowhere", dst / "g")          # dangling: would create it
    for name in ("f", "g"):
        with pytest.raises(UserError, match=f"{name} leads outside"):
            _get({name: b"x"}, dst)
    assert victim.read_text() == "mine\n" and not (tmp_path / "nowhere").exists()


def test_symlinks_that_stay_inside_are_fine(tmp_path):
    dst = tmp_path / "dst"
    (dst / "real").mkdir(parents=True)
    os.symlink("real", dst / "alias")
    _get({"alias": {"f": b"x"}}, dst)
    assert (dst / "real" / "f").read_bytes() == b"x"


@pytest.mark.parametrize("name", ["a.txt", "..hidden", "...", "name with spaces", "é", "a:b"])
def test_bad_name_accepts_ordinary_names(name):
    assert remote.bad_name(name) == ""
