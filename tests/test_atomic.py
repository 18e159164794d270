"""The atomic-write helper: a target is replaced whole or not at all."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core import atomic

ROOT = Path(__file__).resolve().parents[1]


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "status.json"
    path.write_text("old")
    atomic.write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_an_exception_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"old model")
    with pytest.raises(RuntimeError, match="power cut"):
        with atomic.replacing(path) as temporary:
            assert temporary.parent == tmp_path and temporary.suffix == ".keras" and temporary.name.startswith(".")
            temporary.write_bytes(b"half a mod")
            raise RuntimeError("power cut")
    assert path.read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_a_process_killed_mid_write_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"accuracy": 0.5}')
    script = textwrap.dedent(f"""
        import os, signal
        from core import atomic
        with atomic.replacing({str(path)!r}) as temporary:
            temporary.write_text('{{"accur')
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == -signal.SIGKILL
    assert path.read_text() == '{"accuracy": 0.5}'


def test_a_folder_is_replaced_whole_and_an_existing_one_is_kept(tmp_path):
    target = tmp_path / "dataset"
    with atomic.replacing(target, folder=True) as staging:
        (staging / "a.txt").write_text("a")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "a"
    with pytest.raises(OSError):
        with atomic.replacing(target, folder=True) as staging:
            (staging / "b.txt").write_text("b")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]
