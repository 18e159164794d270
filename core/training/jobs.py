"""The job queue that the UI and the CLI submit to; jobs run in worker processes.

Streamlit reruns a page script on every interaction, so training cannot live in a
script run, nor (it would share the GIL and the memory of the web server) in the
server's process at all. One `JobManager` per server process (the UI keeps it in
`st.cache_resource`) queues jobs first in, first out, and runs up to `workers` of
them at once (`$TL_WORKERS`, default 1), each in its own spawned worker process
(see `core.training.worker` for why). It keeps one warm worker ready, started
before it is needed (never while a job runs); left idle, that worker builds the
backbone of the last job to end (`backbone_to_prebuild`), or before any job has ended
the one the manager was given (the dashboard gives its default model's). With more than one worker
on a machine with GPUs, job slot i runs on GPU i mod count (`worker.pinned_environment`);
the server itself only lists the GPUs (which takes no GPU memory).

The manager owns the status of the runs it queued (the run folder records this
process), so a restarted server reads them as interrupted. A worker records its
job's outcome itself; when a worker dies without one (a crash, SIGKILL, out of
memory) the manager marks the run failed with the exit code or signal, and the
next queued job starts. `stop` asks a job to stop after its batch (through the run
folder); `kill` ("Stop now") ends its process and leaves the run stopped, with its
history and last saved model. Progress is read from the run folder (`RunProgress`).
"""
from __future__ import annotations

import pickle
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

from core import settings
from core.config import DataConfig, ModelConfig
from core.errors import UserError
from core.training.progress import RunProgress
from core.training.runs import ACTIVE_STATUSES, FAILED, QUEUED, RUNNING, STOPPED, Run
from core.training.worker import PRELOAD, Worker, exit_reason, pinned_environment

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"

JobFn = Callable  # fn(run, progress): a module-level function or a functools.partial of one


class Job:
    """One unit of work on a run: `fn(run, progress)`, run in a worker process.

    state: "queued", "running" or "done"; error: readable text when it failed; progress:
    what the worker last wrote to the run folder. The outcome is the run's status.
    """

    def __init__(self, run: Run, payload: bytes):
        self.run = run
        self.payload: bytes | None = payload
        self.progress = RunProgress(run)
        self.state = JOB_QUEUED
        self.error: str | None = None
        self.worker: Worker | None = None
        self.slot: int | None = None  # which of the manager's `workers` slots runs it
        self.killed = False

    @property
    def run_id(self) -> str:
        return self.run.id

    def __repr__(self) -> str:
        return f"Job({self.run_id!r}, state={self.state!r})"


def visible_gpus() -> list[str]:
    """The GPUs this process may hand to workers, as `CUDA_VISIBLE_DEVICES` names them: its
    own `$CUDA_VISIBLE_DEVICES` list when set, else TensorFlow's physical GPUs by index.
    Listing physical devices creates no GPU context and takes no GPU memory."""
    visible = settings.cuda_visible_devices()
    if visible is not None:
        return visible
    import tensorflow as tf  # only here: the server imports TensorFlow when it has several workers

    return [str(index) for index in range(len(tf.config.list_physical_devices("GPU")))]


def default_backbone() -> tuple[str, int]:
    """(backbone name, image size) of the default model and data: what a new dashboard's
    first warm worker builds ahead (`JobManager(prebuild=...)`)."""
    return ModelConfig().backbone, DataConfig().image_size


def backbone_to_prebuild(run: Run) -> tuple[str, int] | None:
    """(backbone name, image size) of `run`'s model when it loads ImageNet weights, else
    None: what the next warm worker builds ahead (`Worker(prebuild=...)`), since a next
    run most often changes only the head's settings."""
    try:
        config = run.config
    except (OSError, UserError):
        return None
    return (config.model.backbone, config.data.image_size) if config.model.weights == "imagenet" else None


class JobManager:
    """Runs submitted jobs, first in first out, `workers` at a time, each in a fresh
    worker process that imported `preload` before it was needed.

    `gpus` (default: `visible_gpus()` when `workers` > 1, else none) are the GPU ids the
    job slots are pinned to, slot i to GPU i mod count; with none, workers see what the
    server sees. `prebuild`, (backbone name, image size) or None, is what the warm worker
    builds ahead with ImageNet weights until a job has ended (then: that job's backbone).
    """

    def __init__(self, workers: int | None = None, preload: tuple[str, ...] = PRELOAD,
                 gpus: list[str] | None = None, prebuild: tuple[str, int] | None = None):
        self.workers = workers or settings.workers()
        self._gpus = list(gpus) if gpus is not None else (visible_gpus() if self.workers > 1 else [])
        self._preload = tuple(preload)
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, Job] = {}
        self._warm: Worker | None = None
        self._prebuild = prebuild  # the backbone of the last job to end, for the next worker
        self._closed = False
        with self._cond:
            self._keep_warm()
        self._dispatcher = threading.Thread(target=self._dispatch, name="job-dispatcher", daemon=True)
        self._dispatcher.start()

    def submit(self, run: Run, fn: JobFn) -> Job:
        """Queue `fn(run, progress)`; the run is marked queued until a worker takes it.

        Raises UserError when the run is already queued or running here, and
        TypeError when `fn` cannot be pickled (a lambda, a model...).
        """
        try:
            payload = pickle.dumps(fn)
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            raise TypeError(f"A job must be a module-level function or a functools.partial of one "
                            f"with plain arguments; {fn!r} cannot be sent to a worker ({error}).") from error
        with self._cond:
            if self._closed:
                raise RuntimeError("This JobManager is closed.")
            known = self._jobs.get(run.id)
            if known is not None and known.state != JOB_DONE:
                raise UserError(f"Run {run.id} is already {known.state}.",
                                "Wait for it to end or stop it first.")
            run.clear_stop()
            run.set_status(QUEUED, queued=time.time())
            job = Job(run, payload)
            self._jobs[run.id] = job
            self._queue.append(job)
            self._cond.notify_all()
            return job

    def current(self) -> Job | None:
        """The running job that started first, if any."""
        with self._cond:
            return next(iter(self._running.values()), None)

    def running(self) -> list[Job]:
        """The running jobs, first started first."""
        with self._cond:
            return list(self._running.values())

    def queued(self) -> list[Job]:
        """Jobs waiting to run, next first."""
        with self._cond:
            return list(self._queue)

    def get(self, run_id: str) -> Job | None:
        """Any job this manager knows for `run_id`, including finished ones."""
        with self._cond:
            return self._jobs.get(run_id)

    def stop(self, run_id: str) -> bool:
        """Stop a job: a queued one leaves the queue, a running one is asked to stop
        after its current batch (keeping the best weights so far).

        Returns False when this manager has no queued or running job for `run_id`.
        """
        with self._cond:
            job = self._jobs.get(run_id)
            if job is None or job.state == JOB_DONE:
                return False
            job.run.request_stop()
            if job.state == JOB_QUEUED:
                self._queue.remove(job)
                job.state, job.payload = JOB_DONE, None
                job.run.set_status(STOPPED, finished=time.time())
                self._cond.notify_all()
            return True

    def kill(self, run_id: str) -> bool:
        """"Stop now": end the running job's process at once (SIGKILL). The run is left
        stopped, with its history and the models saved so far. A queued job just leaves
        the queue. Returns False when there is no queued or running job for `run_id`."""
        with self._cond:
            job = self._jobs.get(run_id)
            if job is None or job.state != JOB_RUNNING:
                return self.stop(run_id) if job is not None and job.state == JOB_QUEUED else False
            job.killed = True
            job.run.request_stop()
            worker = job.worker
        if worker is not None:
            worker.process.kill()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or running; False if `timeout` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._running, timeout)

    def warm_worker(self) -> Worker | None:
        """The worker waiting for the next job (for benchmarks: its start-up time)."""
        with self._cond:
            return self._warm

    def close(self) -> None:
        """Take no more jobs, end the warm worker, and stop the dispatcher (queued jobs
        are left queued; running ones run on until they end)."""
        with self._cond:
            self._closed = True
            warm, self._warm = self._warm, None
            self._cond.notify_all()
        if warm is not None:
            warm.retire()

    # inside

    def _free_slots(self) -> list[int]:
        taken = {job.slot for job in self._running.values()}
        return [slot for slot in range(self.workers) if slot not in taken]

    def _keep_warm(self) -> None:
        """Have a live worker waiting (caller holds the lock), started for the first free
        slot, or, when all are busy, for the slot of the job that started first. Called at
        start-up, when a job is dispatched and when the last running job ends, never while
        a job runs: a worker's start-up (importing TensorFlow, several CPU seconds) would
        take them from the job."""
        if not self._closed and (self._warm is None or not self._warm.is_alive()):
            free = self._free_slots()
            slot = free[0] if free else next(iter(self._running.values())).slot
            self._warm = Worker(self._preload, pinned_environment(slot, self._gpus), slot, self._prebuild)

    def _dispatch(self) -> None:
        while True:
            retired = None
            with self._cond:
                self._cond.wait_for(lambda: self._closed or (self._queue and len(self._running) < self.workers))
                if self._closed:
                    return
                self._keep_warm()
                slot = self._free_slots()[0]
                if self._warm.environment != pinned_environment(slot, self._gpus):
                    retired, self._warm = self._warm, None  # warmed for a GPU that is still busy
                    self._keep_warm()
                job, worker = self._queue.popleft(), self._warm
                self._warm = None
                worker.slot = slot
                job.state, job.worker, job.slot = JOB_RUNNING, worker, slot
                self._running[job.run_id] = job
            if retired is not None:
                threading.Thread(target=retired.retire, name="retire-worker", daemon=True).start()
            self._start(job)

    def _start(self, job: Job) -> None:
        payload, job.payload = job.payload, None
        try:
            job.run.set_status(RUNNING, started=time.time(), error=None, hint=None, worker_pid=job.worker.pid)
            job.worker.send(job.run, payload)
        except (OSError, UserError, ValueError) as error:  # a failing disk, a worker gone before its job
            job.worker.process.kill()
            job.error = str(error)
            traceback.print_exc()
        threading.Thread(target=self._watch, args=(job,), name=f"watch-{job.run_id}", daemon=True).start()

    def _watch(self, job: Job) -> None:
        """Wait for the job's process to end; record an outcome the worker could not."""
        process = job.worker.process
        process.join()
        try:
            status = job.run.status()
            if status["status"] in ACTIVE_STATUSES:
                self._record_death(job, exit_reason(process.exitcode))
            elif status["status"] == FAILED:
                job.error = status.get("error")
        except (OSError, UserError):
            traceback.print_exc()  # the disk is failing: the queue goes on regardless
        prebuild = backbone_to_prebuild(job.run)
        with self._cond:
            job.state, job.worker = JOB_DONE, None
            self._running.pop(job.run_id, None)
            self._prebuild = prebuild
            if not self._running:  # warm the next job's worker now, not while a job needs the CPU
                self._keep_warm()
            self._cond.notify_all()

    @staticmethod
    def _record_death(job: Job, reason: str) -> None:
        run, epochs = job.run, len(job.run.history())
        if job.killed:
            run.set_status(STOPPED, finished=time.time(), stopped_now=True,
                           error=None, hint=None)
            run.log(f"Stopped now: the worker process was ended ({reason}); {epochs} epoch(s) of history kept.")
            return
        job.error = f"The worker process died ({reason}) before the job ended."
        run.set_status(FAILED, finished=time.time(), error=job.error,
                       hint="Out of memory is the usual cause: try a smaller image size, batch size or backbone. "
                            f"The history so far and the last saved model are kept; see {run.path / 'log.txt'}.")
        run.log(job.error)
