"""Run directories: round trips, atomic writes, interrupted runs, listing, deletion, disk errors."""
import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import settings
from core.config import ModelConfig, RunConfig, TrainConfig
from core.errors import UserError
from core.training import runs
from core.training.runs import Run, delete_run, list_runs, open_run

CONFIG = RunConfig(model=ModelConfig(backbone="MobileNetV2", hidden_units=64),
                   fine_tune=TrainConfig(fine_tune_at="100", learning_rate=1e-5), name="cats")


@pytest.fixture
def run(tmp_path):
    return Run.create(tmp_path / "runs", CONFIG)


def _foreign_status(pid, pid_start):
    """A running status as another process would have written it."""
    return {"status": "running", "pid": pid, "pid_start": pid_start, "process_token": "other"}


def test_default_runs_dir_reads_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert settings.runs_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("TL_RUNS_DIR")
    assert settings.runs_dir() == Path.cwd() / "runs"


def test_create_names_folder_and_round_trips_config(run, tmp_path):
    assert re.fullmatch(r"\d{8}-\d{6}-mobilenetv2-[0-9a-f]{6}", run.id)
    assert run.path.parent == tmp_path / "runs"
    assert Run(run.path).config == CONFIG
    status = run.status()
    assert status["status"] == "queued"
    assert status["pid"] == os.getpid()
    assert isinstance(status["created"], float)


def test_set_status_merges_fields(run):
    run.set_status("running", started=1.0)
    run.set_status("finished", finished=2.0, seconds_head=0.5)
    status = run.status()
    assert (status["status"], status["started"], status["finished"], status["seconds_head"]) == \
        ("finished", 1.0, 2.0, 0.5)
    with pytest.raises(ValueError):
        run.set_status("done")


def test_history_appends_and_tolerates_torn_last_line(run):
    first = {"phase": "head", "epoch": 0, "loss": 0.7, "val_accuracy": 0.6}
    second = {"phase": "fine_tune", "epoch": 1, "loss": 0.4, "val_accuracy": 0.8}
    run.append_history(first)
    run.append_history(second)
    assert run.history() == [first, second]

    with open(run.path / runs.HISTORY_FILE, "a") as file:
        file.write('{"phase": "fine_tune", "epo')  # a crash mid-write
    assert run.history() == [first, second]
    third = {"phase": "fine_tune", "epoch": 2, "loss": 0.3}
    run.append_history(third)
    assert run.history() == [first, second, third]


def test_history_record_needs_phase_and_epoch(run):
    with pytest.raises(ValueError, match="epoch"):
        run.append_history({"phase": "head", "loss": 1.0})


def test_log_lines_are_timestamped(run):
    run.log("hello")
    run.log("world")
    lines = run.read_log().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d hello", lines[0])


def test_json_round_trip_and_default(run):
    run.write_json("metrics.json", {"test_accuracy": 0.91, "classes": ["cat", "dog"]})
    assert run.read_json("metrics.json") == {"test_accuracy": 0.91, "classes": ["cat", "dog"]}
    assert run.read_json("missing.json", default={}) == {}


def test_crash_during_json_write_keeps_old_file(run, monkeypatch):
    run.write_json("metrics.json", {"test_accuracy": 0.5})

    def crash(*args):
        raise RuntimeError("power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(RuntimeError):
        run.write_json("metrics.json", {"test_accuracy": 0.9})
    monkeypatch.undo()
    assert run.read_json("metrics.json") == {"test_accuracy": 0.5}
    assert not [p for p in run.path.iterdir() if ".tmp" in p.name]


class FakeModel:
    """Stands in for a Keras model: `save(path)` writes `payload` or raises `error`."""

    def __init__(self, payload=b"", error=None):
        self.payload, self.error = payload, error

    def save(self, path):
        if self.error:
            with open(path, "wb") as file:
                file.write(b"partial")
            raise self.error
        with open(path, "wb") as file:
            file.write(self.payload)


def test_save_model_is_atomic(run):
    assert run.save_model(FakeModel(b"v1"), "best") == run.path / "best.keras"
    with pytest.raises(UserError, match="No space left") as info:
        run.save_model(FakeModel(error=OSError(errno.ENOSPC, "No space left on device")), "best")
    assert str(run.path) in info.value.message
    assert (run.path / "best.keras").read_bytes() == b"v1"
    assert sorted(p.name for p in run.path.glob("*.keras")) == ["best.keras"]
    with pytest.raises(ValueError):
        run.model_path("latest")


def test_copy_model_is_atomic(run, monkeypatch):
    run.save_model(FakeModel(b"final"), "final")
    run.save_model(FakeModel(b"old best"), "best")
    run.copy_model("final", "best")
    assert (run.path / "best.keras").read_bytes() == b"final"

    def full_disk(source, target):
        Path(target).write_bytes(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.shutil, "copyfile", full_disk)
    with pytest.raises(UserError, match="No space left"):
        run.copy_model("final", "head")
    assert not (run.path / "head.keras").exists()
    assert sorted(p.name for p in run.path.iterdir() if p.suffix == ".keras") == ["best.keras", "final.keras"]


def test_dead_owner_reads_as_interrupted(run):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    run.write_json(runs.STATUS_FILE, _foreign_status(child.pid, "boot:1"))
    status = run.status()
    assert status["status"] == "interrupted"
    assert str(child.pid) in status["error"]
    assert run.read_json(runs.STATUS_FILE)["status"] == "interrupted"  # persisted


def test_live_foreign_owner_is_running_unless_pid_was_recycled(run):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.write_json(runs.STATUS_FILE, _foreign_status(child.pid, runs.process_start_token(child.pid)))
        assert run.status()["status"] == "running"
        assert run.is_active()
        run.write_json(runs.STATUS_FILE, _foreign_status(child.pid, "another-boot:42"))
        assert run.status()["status"] == "interrupted"
    finally:
        child.kill()
        child.wait()


def test_own_queued_and_running_runs_stay_alive(run):
    assert run.status()["status"] == "queued"
    run.set_status("running")
    assert run.status()["status"] == "running"


def test_delete_refused_while_running_then_allowed(run):
    run.set_status("running")
    with pytest.raises(UserError, match="Stop it first"):
        delete_run(run)
    assert run.path.is_dir()
    run.set_status("stopped")
    delete_run(run)
    assert not run.path.exists()


def test_list_runs_newest_first_skipping_junk(tmp_path):
    runs_dir = tmp_path / "runs"
    older = Run.create(runs_dir, CONFIG)
    newer = Run.create(runs_dir, RunConfig(model=ModelConfig(backbone="MobileNet")))
    (runs_dir / "notes.txt").write_text("not a run")
    (runs_dir / "empty-folder").mkdir()
    (runs_dir / "half").mkdir()
    (runs_dir / "half" / "status.json").write_text("{")
    assert list_runs(runs_dir) == [newer, older]
    assert list_runs(tmp_path / "nothing-here") == []
    assert open_run(runs_dir, older.id) == older
    with pytest.raises(UserError):
        open_run(runs_dir, "empty-folder")


def test_runs_dir_under_a_file_is_a_user_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(UserError) as info:
        Run.create(blocker / "runs", CONFIG)
    assert str(blocker / "runs") in info.value.message
    assert "TL_RUNS_DIR" in info.value.hint


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "No space left"),
                                          (errno.EACCES, "not writable"),
                                          (errno.EROFS, "not writable")])
def test_disk_errors_name_the_folder(run, monkeypatch, code, words):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", fail)  # as the disk refuses the atomic write
    with pytest.raises(UserError, match=words) as info:
        run.write_json("metrics.json", {})
    assert str(run.path) in info.value.message


def test_corrupt_config_is_a_user_error(run):
    (run.path / "config.json").write_text(json.dumps({"model": {"colour": "red"}}))
    with pytest.raises(UserError, match="config.json"):
        Run(run.path).config
