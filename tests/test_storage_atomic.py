"""Atomic writes (slimkit.atomic, used by the .slim writer): all of a file or nothing.

A full disk (the ENOSPC test seam), an interrupt or an unwritable location leaves the
destination as it was and no temporary file behind; environment errors are one-line
UserErrors naming the path; a finished file has mode 0666 minus the umask."""
import errno
import os
import stat

import pytest
import torch.nn as nn

from slimkit import atomic, storage
from slimkit.errors import UserError
from slimkit.plugins import get_registry

INFO = {"model": "t", "input_shape": [1, 4, 4], "num_classes": 3, "data": {}}


def model():
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_slim_file_gets_mode_0644_and_nothing_else_is_left(tmp_path, umask_022):
    path = tmp_path / "out" / "m.slim"  # the directory is made
    size = storage.save_model(path, model(), get_registry(), info=INFO)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.slim"] and size == path.stat().st_size


def test_the_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic.write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o640


@pytest.mark.parametrize("budget", [0, 1, 100, "size-1"])
def test_a_full_disk_while_saving_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, budget):
    path = tmp_path / "m.slim"
    storage.save_model(path, model(), get_registry(), info=INFO)
    before = path.read_bytes()
    monkeypatch.setenv(atomic.FAULT_ENV, str(len(before) - 1 if budget == "size-1" else budget))
    with pytest.raises(UserError) as err:
        storage.save_model(path, model(), get_registry(), info=INFO)
    assert str(err.value) == f"no space left on device writing {path}; free space or choose another --out"
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.slim"]


def test_the_seam_lets_exactly_its_budget_through(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "fail_after_bytes", 10)
    atomic.write_bytes(tmp_path / "ten", b"0123456789")  # exactly the budget: fine
    assert (tmp_path / "ten").read_bytes() == b"0123456789"
    with pytest.raises(UserError, match="no space left"):
        with atomic.atomic_write(tmp_path / "eleven", "w") as f:
            f.write("01234")
            f.write("567890")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ten"]


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("a bug")], ids=["interrupt", "bug"])
def test_an_exception_in_the_block_removes_the_temporary_and_goes_on(tmp_path, exc):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(type(exc)):
        with atomic.atomic_write(target, "w") as f:
            f.write("half of the new")
            raise exc
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_path_under_a_file_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"not a directory writing .*file/sub/m\.slim; choose another --out"):
        storage.save_model(tmp_path / "file" / "sub" / "m.slim", model(), get_registry(), info=INFO)


@pytest.mark.parametrize("code, what", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied"),
                                        (errno.EIO, "Input/output error")])
def test_an_unwritable_destination_is_a_user_error_and_leaves_nothing(tmp_path, monkeypatch, code, what):
    def refuse(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "replace", refuse)
    path = tmp_path / "m.slim"
    with pytest.raises(UserError) as err:
        storage.save_model(path, model(), get_registry(), info=INFO)
    assert str(err.value).startswith(f"{what} writing {path}; ")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_as_the_target_is_a_user_error(tmp_path):
    (tmp_path / "m.slim").mkdir()
    with pytest.raises(UserError, match="writing"):
        atomic.write_bytes(tmp_path / "m.slim", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["m.slim"]
