"""Live progress of a job: kept in memory, written to the run folder, read from it.

`Progress` is what a job reports to (`progress.update(...)`, `progress.stop_requested`),
in memory and thread-safe. `FileProgress` is the one a worker process hands its job:
it also writes the fields to the run's progress.json (throttled, atomically) and
sees a stop asked for by any process through the run's stop file. `RunProgress`
is the reading side, in the server, a second server or the CLI: the same interface,
read from the run folder.
"""
from __future__ import annotations

import copy
import threading
import time

from core.training.runs import Run

WRITE_INTERVAL_S = 0.5
# a change of one of these is written at once, so a page never shows a stale stage
IMMEDIATE_FIELDS = ("stage", "phase", "epoch", "epochs")


class Stopped(Exception):
    """The user stopped the job before anything was trained (raised between batches
    of work that trains nothing: feature extraction, reading features)."""


class Progress:
    """Live progress of one job, written by the job and read by pages.

    Fields are free-form: stage, phase, epoch, epochs, batch, batches,
    images_per_second, eta_seconds (seconds), message, metrics (a dict)...
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._fields: dict = {}
        self._stop = threading.Event()
        self._started: float | None = None

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask the job to stop at its next check (e.g. the end of a batch)."""
        self._stop.set()

    def start(self) -> None:
        """Start the elapsed-time clock (the worker calls this when the job starts)."""
        with self._lock:
            self._started = time.monotonic()

    def update(self, **fields) -> None:
        """Merge `fields` into the progress."""
        fields = copy.deepcopy(fields)
        with self._lock:
            self._fields.update(fields)

    def snapshot(self) -> dict:
        """A copy of all fields plus `elapsed_seconds` and `stop_requested`."""
        with self._lock:
            snapshot = copy.deepcopy(self._fields)
            started = self._started
        snapshot["elapsed_seconds"] = 0.0 if started is None else time.monotonic() - started
        snapshot["stop_requested"] = self.stop_requested
        return snapshot


class FileProgress(Progress):
    """Progress mirrored to `run`'s progress.json, at most every `interval` seconds
    (at once when the stage, phase or epoch changes); a stop file in the run folder,
    written by any process (`Run.request_stop`), counts as a stop request."""

    def __init__(self, run: Run, interval: float = WRITE_INTERVAL_S):
        super().__init__()
        self.run, self.interval = run, interval
        self._written = float("-inf")
        self._started_at = time.time()

    @property
    def stop_requested(self) -> bool:
        if not self._stop.is_set() and self.run.stop_requested_at() is not None:
            self._stop.set()
        return self._stop.is_set()

    def start(self) -> None:
        super().start()
        self._started_at = time.time()
        self.flush()

    def update(self, **fields) -> None:
        with self._lock:
            changed = any(key in fields and self._fields.get(key) != fields[key] for key in IMMEDIATE_FIELDS)
        super().update(**fields)
        if changed or time.monotonic() - self._written >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write the fields now, with `started` and `updated` (wall-clock seconds)."""
        self._written = time.monotonic()
        snapshot = self.snapshot()
        snapshot.update(started=self._started_at, updated=time.time())
        self.run.write_progress(snapshot)


class RunProgress:
    """The progress a job in another process wrote to `run`'s folder: the reading side
    of `FileProgress`, with the same `snapshot`, `stop_requested` and `request_stop`."""

    def __init__(self, run: Run):
        self.run = run

    @property
    def stop_requested(self) -> bool:
        return self.run.stop_requested_at() is not None

    def request_stop(self) -> None:
        self.run.request_stop()

    def snapshot(self) -> dict:
        """The last written fields, `elapsed_seconds` measured up to now, and `stop_requested`."""
        snapshot = self.run.progress()
        started = snapshot.get("started")
        snapshot["elapsed_seconds"] = time.time() - started if isinstance(started, (int, float)) else 0.0
        snapshot["stop_requested"] = self.stop_requested
        return snapshot
