"""The --out lock and the resume settings check (slimkit.rundir)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from slimkit.errors import UserError
from slimkit.rundir import LOCK_NAME, SETTINGS_NAME, OutLock, check_resume_settings


def test_second_lock_on_same_out_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with OutLock(out, "compress"):
        with pytest.raises(UserError) as err:
            OutLock(out, "sweep").acquire()
        msg = str(err.value)
        assert f"pid {os.getpid()}" in msg and "compress" in msg and "\n" not in msg
    # released: the lock file is gone and a new run takes it
    assert not (out / LOCK_NAME).exists()
    with OutLock(out, "compress"):
        pass


def test_lock_held_by_another_process_is_refused(tmp_path):
    out = tmp_path / "run"
    code = textwrap.dedent(f"""
        import sys, time
        from slimkit.rundir import OutLock
        lock = OutLock({str(out)!r}, "compress").acquire()
        print("locked", flush=True)
        sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"pid {proc.pid}"):
            OutLock(out, "compress").acquire()
    finally:
        proc.kill()
        proc.wait()
    # the holder died without releasing: its stale lock file is taken over
    assert (out / LOCK_NAME).exists()
    with OutLock(out, "compress"):
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid()


def test_failed_run_leaves_no_empty_out(tmp_path):
    out = tmp_path / "new"
    with OutLock(out, "compress"):
        assert out.is_dir()
    assert not out.exists()


def test_unwritable_out_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        OutLock(blocker / "sub", "compress").acquire()


def test_resume_with_changed_option_names_it(tmp_path):
    work = tmp_path / ".work"
    settings = {"model": "lenet300", "options": {"prune": {"sparsity": 0.5, "schedule": "gradual"}}, "seed": 0}
    check_resume_settings(work, settings, resume=False)
    assert json.loads((work / SETTINGS_NAME).read_text()) == settings
    check_resume_settings(work, settings, resume=True)  # same settings: fine
    changed = {**settings, "options": {"prune": {"sparsity": 0.95, "schedule": "gradual"}}, "seed": 1}
    with pytest.raises(UserError) as err:
        check_resume_settings(work, changed, resume=True)
    msg = str(err.value)
    assert "options.prune.sparsity was 0.5, now 0.95" in msg and "seed was 0, now 1" in msg
    assert "schedule" not in msg


def test_resume_of_work_dir_without_settings_is_refused(tmp_path):
    work = tmp_path / ".work"
    work.mkdir()
    (work / "checkpoints").mkdir()
    with pytest.raises(UserError, match="no record of the settings"):
        check_resume_settings(work, {"seed": 0}, resume=True)
