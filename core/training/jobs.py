"""A background job runner that the UI polls.

Streamlit reruns a page script on every interaction, so training cannot live in
a script run. One `JobManager` per server process (the UI keeps it in
`st.cache_resource`) runs jobs one at a time on a daemon worker thread. A job
publishes its progress to a thread-safe `Progress` and to its run directory;
pages poll `JobManager.get(run_id).progress.snapshot()` from any browser session.
The worker never touches Streamlit. The CLI submits a job and calls `wait()`.
"""
from __future__ import annotations

import copy
import gc
import sys
import threading
import time
import traceback
from collections import deque
from typing import Callable

from core.errors import UserError
from core.training.runs import FAILED, FINISHED, QUEUED, RUNNING, STOPPED, Run

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"


class Progress:
    """Live progress of one job, written by the worker and read by pages.

    Fields are free-form: phase, epoch, epochs, batch, batches,
    images_per_second, eta_seconds, message, metrics (a dict)...
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
        """Start the elapsed-time clock (the manager calls this when the job starts)."""
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


JobFn = Callable[[Run, Progress], None]


class Job:
    """One unit of work on a run: `fn(run, progress)`.

    state: "queued", "running" or "done"; error: readable text when it failed.
    The outcome (finished / stopped / failed) is the run's status.
    """

    def __init__(self, run: Run, fn: JobFn):
        self.run = run
        self.fn: JobFn | None = fn
        self.progress = Progress()
        self.state = JOB_QUEUED
        self.error: str | None = None

    @property
    def run_id(self) -> str:
        return self.run.id

    def __repr__(self) -> str:
        return f"Job({self.run_id!r}, state={self.state!r})"


def _describe(error: BaseException) -> dict:
    """Status fields for a failure: a UserError's message and hint, else "Type: message"."""
    if isinstance(error, UserError):
        return {"error": error.message, "hint": error.hint}
    return {"error": f"{type(error).__name__}: {error}", "hint": ""}


def release_memory() -> None:
    """Drop the graph and tensors of finished work so a long-lived server stays flat."""
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.backend.clear_session()
    gc.collect()


class JobManager:
    """Runs submitted jobs one at a time, first in first out, on a daemon thread."""

    def __init__(self):
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._current: Job | None = None
        self._worker = threading.Thread(target=self._work, name="job-worker", daemon=True)
        self._worker.start()

    def submit(self, run: Run, fn: JobFn) -> Job:
        """Queue `fn(run, progress)`; the run is marked queued until the worker takes it."""
        with self._cond:
            known = self._jobs.get(run.id)
            if known is not None and known.state != JOB_DONE:
                raise UserError(f"Run {run.id} is already {known.state}.",
                                "Wait for it to end or stop it first.")
            run.set_status(QUEUED, queued=time.time())
            job = Job(run, fn)
            self._jobs[run.id] = job
            self._queue.append(job)
            self._cond.notify_all()
            return job

    def current(self) -> Job | None:
        """The running job, if any."""
        with self._cond:
            return self._current

    def queued(self) -> list[Job]:
        """Jobs waiting to run, next first."""
        with self._cond:
            return list(self._queue)

    def get(self, run_id: str) -> Job | None:
        """Any job this manager knows for `run_id`, including finished ones."""
        with self._cond:
            return self._jobs.get(run_id)

    def stop(self, run_id: str) -> bool:
        """Stop a job: a queued one leaves the queue, a running one is asked to stop.

        Returns False when this manager has no queued or running job for `run_id`.
        """
        with self._cond:
            job = self._jobs.get(run_id)
            if job is None or job.state == JOB_DONE:
                return False
            job.progress.request_stop()
            if job.state == JOB_QUEUED:
                self._queue.remove(job)
                job.state = JOB_DONE
                job.fn = None
                job.run.set_status(STOPPED, finished=time.time())
                self._cond.notify_all()
            return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False if `timeout` ran out first."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._queue and self._current is None, timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue)
                job = self._current = self._queue.popleft()
                job.state = JOB_RUNNING
            self._run(job)
            try:
                release_memory()
            except Exception:  # a failing cleanup must not stop the queue
                traceback.print_exc()
            with self._cond:
                job.state = JOB_DONE
                self._current = None
                self._cond.notify_all()

    def _run(self, job: Job) -> None:
        """Run one job and record its outcome; never raises, so the worker survives."""
        run, progress, fn = job.run, job.progress, job.fn
        job.fn = None  # the job list must not keep models or datasets alive
        try:
            run.set_status(RUNNING, started=time.time(), error=None, hint=None)
            progress.start()
            run.log("Job started.")
            fn(run, progress)
        except BaseException as error:  # even sys.exit() in a job ends that job only
            fields = _describe(error)
            job.error = str(error) if isinstance(error, UserError) else fields["error"]
            log = f"Failed: {error}" if isinstance(error, UserError) else traceback.format_exc()
            self._record(run, FAILED, fields, log=log)
        else:
            outcome = STOPPED if progress.stop_requested else FINISHED
            self._record(run, outcome, {}, log=f"Job {outcome}.")

    @staticmethod
    def _record(run: Run, status: str, fields: dict, log: str) -> None:
        try:
            run.set_status(status, finished=time.time(), **fields)
            run.log(log)
        except (OSError, UserError):
            traceback.print_exc()  # the disk is failing: the worker goes on regardless
