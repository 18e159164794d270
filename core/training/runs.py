"""Run directories on disk: config, status, history, log, metrics and saved models.

A run is one folder under the runs directory::

    runs/20240501-142233-mobilenetv2-3fa9c1/
        config.json     the RunConfig that reproduces the run
        status.json     queued | running | finished | stopped | failed | interrupted
        history.jsonl   one JSON record per epoch ({"phase": ..., "epoch": ..., ...})
        log.txt         timestamped messages and tracebacks
        progress.json   the live progress of the job working on the run (stage, batch, ETA...)
        stop-requested  present while a stop has been asked for (any process may ask)
        metrics.json    written by evaluation (any name via `write_json`)
        best.keras, head.keras, final.keras

Every JSON file and model is written atomically (`core.atomic`), so a crash
leaves either the old or the new file, never half of one. status.json records
which process owns a queued or running run; when that process is gone the run
reads as "interrupted".
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import secrets
import shutil
import threading
import time
from contextlib import contextmanager, suppress
from functools import cached_property
from pathlib import Path
from typing import Any

import psutil

from core import atomic
from core import config as config_io
from core.config import RunConfig
from core.errors import UserError

QUEUED = "queued"
RUNNING = "running"
FINISHED = "finished"
STOPPED = "stopped"
FAILED = "failed"
INTERRUPTED = "interrupted"
STATUSES = (QUEUED, RUNNING, FINISHED, STOPPED, FAILED, INTERRUPTED)
ACTIVE_STATUSES = (QUEUED, RUNNING)

MODEL_KINDS = ("best", "final", "head")
HISTORY_PHASES = ("head", "fine_tune")

CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
HISTORY_FILE = "history.jsonl"
LOG_FILE = "log.txt"
PROGRESS_FILE = "progress.json"
STOP_FILE = "stop-requested"

_WHERE_TO_WRITE = "Set TL_RUNS_DIR to a writable folder with free space, then try again."
_STATUS_LOCK = threading.RLock()


# --- which process owns a run --------------------------------------------------

def process_start_token(pid: int) -> str | None:
    """An id of the process `pid` that a recycled pid does not share: its creation
    time (`psutil.Process.create_time`, seconds since the epoch) as text. None when
    the process does not exist, is a zombie or cannot be inspected.
    """
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return repr(process.create_time())
    except psutil.Error:
        return None


def _new_process_token() -> str:
    return secrets.token_hex(8)


_PROCESS_TOKEN = _new_process_token()


def _renew_process_token() -> None:
    global _PROCESS_TOKEN
    _PROCESS_TOKEN = _new_process_token()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_process_token)


def _this_process() -> dict:
    pid = os.getpid()
    return {"pid": pid, "pid_start": process_start_token(pid), "process_token": _PROCESS_TOKEN}


def owner_alive(status: dict) -> bool:
    """Whether the process recorded in a status dict still exists.

    This process owns its own queued and running jobs. Another process counts
    only if its pid exists (`psutil.pid_exists`), is not a zombie and, where known,
    its start token still matches (a recycled pid does not).
    """
    if status.get("process_token") == _PROCESS_TOKEN:
        return True
    pid = status.get("pid")
    if not isinstance(pid, int) or pid <= 0 or not psutil.pid_exists(pid):
        return False
    current = process_start_token(pid)
    recorded = status.get("pid_start")
    return current is not None and (recorded is None or recorded == current)


# --- safe writes -----------------------------------------------------------------

def _storage_error(directory: Path, error: OSError) -> UserError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"No space left on the disk of {directory}.",
                         "Free some disk space, or set TL_RUNS_DIR to a folder on another disk, "
                         "then try again.")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"The runs folder {directory} is not writable ({error.strerror}).",
                         _WHERE_TO_WRITE)
    return UserError(f"Cannot write to the runs folder {directory}: {error.strerror or error}.",
                     _WHERE_TO_WRITE)


@contextmanager
def _writing(directory: Path):
    """Turn OSErrors of disk writes into a UserError that names `directory`."""
    try:
        yield
    except OSError as error:
        raise _storage_error(directory, error) from error


def _read_json_file(path: Path, default: Any = None) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error.msg}, line {error.lineno}).",
                        "Delete this run or restore the file.") from error


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


# --- runs ----------------------------------------------------------------------

class Run:
    """One run directory. Cheap to construct: reads nothing until asked."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def id(self) -> str:
        return self.path.name

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @classmethod
    def create(cls, runs_dir: Path | str, config: RunConfig) -> Run:
        """Make a new queued run folder holding `config`, owned by this process."""
        runs_dir = Path(runs_dir)
        backbone = "".join(c for c in config.model.backbone.lower() if c.isalnum()) or "model"
        with _writing(runs_dir):
            runs_dir.mkdir(parents=True, exist_ok=True)
            while True:
                stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
                path = runs_dir / f"{stamp}-{backbone}-{secrets.token_hex(3)}"
                try:
                    path.mkdir()
                    break
                except FileExistsError:
                    continue
            run = cls(path)
            # status first: a folder with config.json always has a status
            run.set_status(QUEUED, created=time.time())
            atomic.write_text(path / CONFIG_FILE, config_io.dumps(config))
        return run

    @cached_property
    def config(self) -> RunConfig:
        path = self.path / CONFIG_FILE
        try:
            return config_io.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as error:
            raise UserError(f"{path} is missing: {self.path} is not a run folder.",
                            "Pick another run or delete this folder.") from error
        except ValueError as error:  # includes json.JSONDecodeError
            raise UserError(f"{path} is not a valid run configuration ({error}).",
                            "Delete this run or restore its config.json.") from error

    # status

    def status(self) -> dict:
        """The stored status, as "interrupted" (persisted) if its owner process is gone."""
        with _STATUS_LOCK:
            status = _read_json_file(self.path / STATUS_FILE, default={})
            if status.get("status") not in STATUSES:
                return {**status, "status": INTERRUPTED,
                        "error": f"{self.path / STATUS_FILE} is missing or unreadable."}
            if status["status"] in ACTIVE_STATUSES and not owner_alive(status):
                return self.set_status(
                    INTERRUPTED, interrupted=time.time(),
                    error=f"The process (pid {status.get('pid')}) that owned this "
                          f"{status['status']} run ended before it finished.")
            return status

    def set_status(self, status: str, **fields) -> dict:
        """Store `status`, merging `fields` into status.json; returns the new dict.

        Setting queued or running makes this process the run's owner.
        """
        if status not in STATUSES:
            raise ValueError(f"Unknown run status {status!r}; expected one of {STATUSES}.")
        with _STATUS_LOCK:
            merged = _read_json_file(self.path / STATUS_FILE, default={})
            merged.update(fields, status=status)
            if status in ACTIVE_STATUSES:
                merged.update(_this_process())
            self.write_json(STATUS_FILE, merged)
            return merged

    def update_status(self, **fields) -> dict:
        """Merge `fields` into status.json, keeping the status and its owner as they are."""
        with _STATUS_LOCK:
            merged = _read_json_file(self.path / STATUS_FILE, default={})
            merged.update(fields)
            self.write_json(STATUS_FILE, merged)
            return merged

    def is_active(self) -> bool:
        """Queued or running in a process that is still alive."""
        return self.status()["status"] in ACTIVE_STATUSES

    # progress and stop requests, shared by every process through the run folder

    def write_progress(self, fields: dict) -> None:
        """Replace progress.json with `fields` (atomically; a reader sees old or new)."""
        with _writing(self.path):
            atomic.write_text(self.path / PROGRESS_FILE, json.dumps(fields, sort_keys=True))

    def progress(self) -> dict:
        """The last progress the run's job wrote ({} before its first write).

        A file torn by a crash, or replaced while read, reads as {}: progress is advisory.
        """
        try:
            return self.read_json(PROGRESS_FILE, default={})
        except UserError:
            return {}

    def request_stop(self) -> None:
        """Ask the job working on this run, in whatever process, to stop after its batch."""
        with _writing(self.path):
            (self.path / STOP_FILE).write_text(f"{time.time()}\n", encoding="utf-8")

    def stop_requested_at(self) -> float | None:
        """When a stop was asked for (seconds since the epoch), or None."""
        try:
            return (self.path / STOP_FILE).stat().st_mtime
        except OSError:
            return None

    def clear_stop(self) -> None:
        """Forget an earlier stop request (a new job on the run starts afresh)."""
        with suppress(FileNotFoundError):
            (self.path / STOP_FILE).unlink()

    # history and log

    def append_history(self, record: dict) -> None:
        """Append one epoch record (with "phase" and "epoch") to history.jsonl, durably."""
        missing = {"phase", "epoch"} - set(record)
        if missing:
            raise ValueError(f"History record lacks {sorted(missing)}: {record}")
        if record["phase"] not in HISTORY_PHASES:
            raise ValueError(f"History phase must be one of {HISTORY_PHASES}, not {record['phase']!r}.")
        line = json.dumps(record, sort_keys=True) + "\n"
        with _writing(self.path), open(self.path / HISTORY_FILE, "a+", encoding="utf-8") as file:
            if file.tell() > 0:
                file.seek(file.tell() - 1)
                if file.read(1) != "\n":  # a torn line from a crash: start a fresh one
                    line = "\n" + line
            file.write(line)
            file.flush()
            os.fsync(file.fileno())

    def history(self) -> list[dict]:
        """All epoch records in order; a line torn by a crash is skipped."""
        try:
            lines = (self.path / HISTORY_FILE).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def drop_history(self, phase: str) -> None:
        """Remove `phase`'s epoch records from history.jsonl (atomically), keeping the others in order."""
        kept = [record for record in self.history() if record.get("phase") != phase]
        with _writing(self.path):
            atomic.write_text(self.path / HISTORY_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def log(self, message: str) -> None:
        """Append a timestamped line (or block, e.g. a traceback) to log.txt."""
        with _writing(self.path), open(self.path / LOG_FILE, "a", encoding="utf-8") as file:
            file.write(f"{_timestamp()} {message.rstrip()}\n")

    def read_log(self) -> str:
        try:
            return (self.path / LOG_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    # models and JSON files

    def model_path(self, kind: str) -> Path:
        """Where the `kind` model ("best", "final" or "head") is saved."""
        if kind not in MODEL_KINDS:
            raise ValueError(f"Model kind must be one of {MODEL_KINDS}, not {kind!r}.")
        return self.path / f"{kind}.keras"

    def save_model(self, model, kind: str) -> Path:
        """Save `model` as `<kind>.keras` atomically: a failed save keeps the old file."""
        return self._replace_model(kind, model.save)

    def copy_model(self, source_kind: str, kind: str) -> Path:
        """Copy `<source_kind>.keras` to `<kind>.keras`, atomically."""
        return self._replace_model(kind, lambda tmp: shutil.copyfile(self.model_path(source_kind), tmp))

    def _replace_model(self, kind: str, write) -> Path:
        target = self.model_path(kind)
        with _writing(self.path), atomic.replacing(target) as temporary:
            write(temporary)
        return target

    def write_json(self, name: str, obj: Any) -> None:
        """Write `obj` as JSON to `name` in the run folder, atomically."""
        with _writing(self.path):
            atomic.write_text(self.path / name, json.dumps(obj, indent=2, sort_keys=True))

    def read_json(self, name: str, default: Any = None) -> Any:
        """The JSON in `name`, or `default` when the file does not exist."""
        return _read_json_file(self.path / name, default)


def _created(run: Run) -> float:
    try:
        created = run.read_json(STATUS_FILE, default={}).get("created")
    except UserError:
        created = None
    return created if isinstance(created, (int, float)) else run.path.stat().st_mtime


def list_runs(runs_dir: Path | str) -> list[Run]:
    """The runs in `runs_dir`, newest first; folders without a config.json are skipped."""
    runs_dir = Path(runs_dir)
    try:
        entries = list(runs_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    runs = [Run(entry) for entry in entries
            if entry.is_dir() and (entry / CONFIG_FILE).is_file()]
    return sorted(runs, key=lambda run: (_created(run), run.id), reverse=True)


def open_run(runs_dir: Path | str, run_id: str) -> Run:
    """The run called `run_id` in `runs_dir`."""
    path = Path(runs_dir) / run_id
    if Path(run_id).name != run_id or not (path / CONFIG_FILE).is_file():
        raise UserError(f"There is no run {run_id!r} in {runs_dir}.",
                        "Pick one of the runs listed on the Runs page.")
    return Run(path)


def delete_run(run: Run) -> None:
    """Remove the run folder; refused while the run is queued or running."""
    status = run.status()["status"]
    if status in ACTIVE_STATUSES:
        raise UserError(f"Run {run.id} is {status} and cannot be deleted.",
                        "Stop it first, then delete it once it has stopped.")
    with _writing(run.path):
        shutil.rmtree(run.path)
