"""Live progress of a job: kept in memory, written to the run folder, read from it.

`Progress` is what a job reports to (`progress.update(...)`, `progress.stop_requested`),
in memory and thread-safe; what it holds is a typed `ProgressRecord`. `FileProgress`
is the one a worker process hands its job: it also writes the record to the run's
progress.json (throttled, atomically) and sees a stop asked for by any process
through the run's stop file. `RunProgress` is the reading side, in the server, a
second server or the CLI: the same interface, read from the run folder.
"""
from __future__ import annotations

import copy
import dataclasses
import threading
import time
from dataclasses import dataclass

from core.training.runs import Run

WRITE_INTERVAL_S = 0.5
# a change of one of these is written at once, so a page never shows a stale stage
IMMEDIATE_FIELDS = ("stage", "phase", "epoch", "epochs")


class Stopped(Exception):
    """The user stopped the job before anything was trained (raised between batches
    of work that trains nothing: feature extraction, reading features)."""


@dataclass
class ProgressRecord:
    """What a job reports about itself; None means not reported (yet).

    stage: what it does now, in words ("loading data", "extracting features (view
        1/2)", "training", "saving models", "ended"...).
    phase: "head" or "fine_tune"; path: "features" (fast path) or "full".
    epoch: epochs done, counted across phases (1-based); epochs: epochs in this
        phase; epoch_in_phase: epochs done in this phase.
    batch / batches: batches done / in all, of the current stage.
    images_per_second: throughput of the current stage; eta_seconds: seconds
        until the stage ends, estimated.
    metrics: the last batch's logs (loss, accuracy...; the lr finder's
        learning_rate and smoothed loss); initial: the untrained head's validation
        loss and accuracy; trials: a sweep's rows so far.
    elapsed_seconds, stop_requested: filled in by `snapshot()`; started / updated:
        wall-clock seconds (Unix time), written by `FileProgress`.
    On disk (progress.json) it is `to_dict()`: the fields that are not None.
    """

    stage: str | None = None
    phase: str | None = None
    path: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    epoch_in_phase: int | None = None
    batch: int | None = None
    batches: int | None = None
    images_per_second: float | None = None
    eta_seconds: float | None = None
    metrics: dict | None = None
    initial: dict | None = None
    trials: list | None = None
    elapsed_seconds: float = 0.0
    stop_requested: bool = False
    started: float | None = None
    updated: float | None = None

    def to_dict(self) -> dict:
        """The fields that are not None, as JSON-ready values."""
        return {key: value for key, value in dataclasses.asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, fields: dict) -> ProgressRecord:
        """The record `to_dict` wrote; keys it does not know (a newer writer's) are ignored."""
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in fields.items() if key in known})


class Progress:
    """Live progress of one job, written by the job and read by pages.

    `update(**fields)` takes `ProgressRecord` fields (TypeError for any other name).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._record = ProgressRecord()
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
        """Set these `ProgressRecord` fields; the others keep their values."""
        fields = copy.deepcopy(fields)
        with self._lock:
            self._record = dataclasses.replace(self._record, **fields)

    def snapshot(self) -> ProgressRecord:
        """A copy of the record, with `elapsed_seconds` and `stop_requested` filled in."""
        with self._lock:
            record = copy.deepcopy(self._record)
            started = self._started
        return dataclasses.replace(record, elapsed_seconds=0.0 if started is None else time.monotonic() - started,
                                   stop_requested=self.stop_requested)


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
            changed = any(key in fields and getattr(self._record, key) != fields[key] for key in IMMEDIATE_FIELDS)
        super().update(**fields)
        if changed or time.monotonic() - self._written >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write the fields now, with `started` and `updated` (wall-clock seconds)."""
        self._written = time.monotonic()
        record = dataclasses.replace(self.snapshot(), started=self._started_at, updated=time.time())
        self.run.write_progress(record.to_dict())


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

    def snapshot(self) -> ProgressRecord:
        """The last written record, `elapsed_seconds` measured up to now, and `stop_requested`."""
        record = ProgressRecord.from_dict(self.run.progress())
        started = record.started
        return dataclasses.replace(
            record, elapsed_seconds=time.time() - started if isinstance(started, (int, float)) else 0.0,
            stop_requested=self.stop_requested)
