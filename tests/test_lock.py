"""One writer per output folder (roma_sfm.lock): re-entrant in a process, refused to a second
process with a message naming it, taken over from a process killed with -9, and `roma-sfm train`
refused on a training folder in use. The CLI cases of reconstruct, match and map are fault cases
(benchmarks/fault_cases.py: two_writers, stale_lock)."""
import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from roma_sfm.lock import LOCK_NAME, OutputLocked, output_lock, read_holder, writes_into

HOLD = """
import sys, time
from roma_sfm.lock import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path / 'out'``; killed with -9 at the end."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_reentrant_in_a_process_and_removed_at_the_end(tmp_path):
    out = tmp_path / "out"
    with output_lock(out):
        assert read_holder(out / LOCK_NAME).pid == os.getpid()
        with output_lock(out / "."):  # the same folder spelt otherwise: this process already holds it
            pass
        assert (out / LOCK_NAME).is_file()
    assert not (out / LOCK_NAME).exists()

    @writes_into(lambda folder: folder)
    def fails(folder):
        raise ValueError("boom")

    with pytest.raises(ValueError):
        fails(out)
    assert not (out / LOCK_NAME).exists()  # given back however the call ended


def test_second_process_refused_then_stale_lock_taken_over(tmp_path, holder, caplog):
    out = tmp_path / "out"
    started = read_holder(out / LOCK_NAME).started
    with pytest.raises(OutputLocked) as e:
        output_lock(out).acquire()
    assert str(e.value) == (f"another roma-sfm process (pid {holder.pid}, started {started}) is writing {out}; "
                            "wait for it or choose another output")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert read_holder(out / LOCK_NAME).pid == holder.pid  # kill -9: the file stays
    with caplog.at_level(logging.WARNING, logger="roma_sfm.lock"), output_lock(out):
        assert read_holder(out / LOCK_NAME).pid == os.getpid()
    assert f"stale lock of {out}: roma-sfm process pid {holder.pid}" in caplog.text
    assert "no longer running" in caplog.text


def test_train_refused_on_a_folder_in_training(tmp_path, holder):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "roma_sfm.cli.main", "train", "--out-dir", str(out), "--steps", "1"],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})
    started = json.loads((out / LOCK_NAME).read_text())["started"]
    assert res.returncode == 1, res.stdout + res.stderr
    assert (f"error: another roma-sfm process (pid {holder.pid}, started {started}) is writing {out}; wait for it "
            "or choose another output") in " ".join(res.stdout.split())
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
