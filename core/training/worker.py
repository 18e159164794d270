"""Worker processes: every job runs in a process of its own, never in the server.

Design, all from the standard library's `multiprocessing` with the "spawn" context
(a fresh interpreter: no copy of the server's threads, locks or TensorFlow state):

- A `Worker` is started *before* it is needed: when the server starts and whenever
  the last running job ends, never while a job runs (its start-up would take CPU from
  that job). It imports TensorFlow/Keras and the workflow (`preload`, several seconds),
  says "ready" on its `Pipe`, then waits for one job, so a job started on an idle
  server finds a warm worker. Given a backbone to prebuild (the one the last job used,
  with ImageNet weights) and no job within `PREBUILD_AFTER` seconds of being ready, it
  builds that backbone while it waits (`core.model.backbones.prebuild`), so a next run
  on the same backbone, the usual quick try, does not wait for Keras to build it, while
  a job sent at once (fine-tuning straight after the head, a queued job) is not delayed
  by a backbone it may not need.
- It runs that one job and exits. Whatever TensorFlow's runtime keeps (it never gives
  back some of the memory of a finished job) goes with the process, so the server's
  memory stays flat by construction, and a crash inside TensorFlow, an out-of-memory
  kill or `os._exit` ends that job only. Reusing a worker for several jobs would save
  the start-up (measured by benchmarks/benchmark_watched.py) but keep the growth.
- Everything a page needs crosses the boundary through the run folder: the job's
  history, models and status, `progress.json` (`FileProgress`) and the stop file that
  `progress.stop_requested` reads, so the server, a second server, the CLI and a
  restarted server read the same truth. The pipe carries only the job itself.
- With `TL_WORKERS=N` above 1 on a machine with GPUs, worker slot i is pinned to GPU
  i mod count (`pinned_environment`): `CUDA_VISIBLE_DEVICES` is set in the worker's
  environment before it imports TensorFlow, so each job has its device to itself. One
  worker (the default) sees every GPU and trains on all of them (MirroredStrategy).
- The worker dies with its parent (a thread waits on the parent's sentinel), so a
  server killed mid-run leaves its runs interrupted, not trained on by an orphan; and
  it ignores SIGINT, so Ctrl-C in the CLI stops the job after its batch instead.

A job is `fn(run, progress)`, pickled: a module-level function (or a functools.partial
of one) and plain data, never a lambda, a model or an array.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
import types
from contextlib import contextmanager
from pathlib import Path

from core.errors import UserError
from core.training.progress import FileProgress
from core.training.runs import FAILED, FINISHED, STOPPED, Run

CONTEXT = multiprocessing.get_context("spawn")
PRELOAD = ("core.workflow",)  # imports TensorFlow and Keras
PREBUILD_AFTER = 2.0  # seconds a ready worker waits for a job before it prebuilds a backbone
_MAIN_LOCK = threading.Lock()


@contextmanager
def _without_main_script():
    """Start a spawned process without it re-running this process's `__main__`.

    `spawn` re-imports the parent's main module in the child (the documented reason for
    the `if __name__ == "__main__"` idiom). Under Streamlit, `sys.modules["__main__"]` is
    the page script being run, which would run the whole page (and start workers) in
    the child; the worker needs nothing from it, so the child is shown a bare module.
    """
    with _MAIN_LOCK:
        main = sys.modules.get("__main__")
        bare = types.ModuleType("__main__")
        sys.modules["__main__"] = bare
        try:
            yield
        finally:
            if sys.modules.get("__main__") is bare:
                sys.modules["__main__"] = main


def describe(error: BaseException) -> dict:
    """Status fields for a failure: a UserError's message and hint, else "Type: message"."""
    if isinstance(error, UserError):
        return {"error": error.message, "hint": error.hint}
    return {"error": f"{type(error).__name__}: {error}", "hint": ""}


def exit_reason(exitcode: int | None) -> str:
    """How a process ended, in words: "killed by signal SIGKILL", "exit code 3"."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def pinned_environment(slot: int, gpus: list[str]) -> dict[str, str]:
    """The environment worker slot `slot` starts with to have one GPU of `gpus` (ids or
    UUIDs, as `CUDA_VISIBLE_DEVICES` takes them) to itself: GPU `slot mod len(gpus)`.
    {} without GPUs (the worker keeps the server's environment)."""
    return {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else {}


class Worker:
    """One spawned worker process, warming up (importing `preload`) until it is sent a job.

    `environment` is set in the worker's `os.environ` before it imports anything of
    `preload` (TensorFlow reads `CUDA_VISIBLE_DEVICES` when it first looks for GPUs);
    `slot` is the job slot it was started for (see `pinned_environment`); `prebuild`,
    (backbone name, image size) or None, is a backbone to build with ImageNet weights
    once idle, for the job to take (a failure there is left for the job to meet).
    `send(run, payload)` hands it the job (`payload`: a pickled `fn(run, progress)`);
    `retire()` ends a worker that was never used.
    """

    def __init__(self, preload: tuple[str, ...] = PRELOAD, environment: dict[str, str] | None = None, slot: int = 0,
                 prebuild: tuple[str, int] | None = None):
        self.created = time.monotonic()
        self.environment, self.slot, self.prebuild = dict(environment or {}), slot, prebuild
        self._connection, child = CONTEXT.Pipe()
        self.process = CONTEXT.Process(target=serve, args=(child, tuple(preload), self.environment, prebuild),
                                       name="tl-worker", daemon=True)
        with _without_main_script():
            self.process.start()
        child.close()
        self.ready_after: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def wait_ready(self, timeout: float | None = None) -> float | None:
        """Seconds the worker took from its start to ready (imports done), once it is;
        None if it did not get there within `timeout` seconds."""
        if self.ready_after is None and self._connection.poll(timeout):
            try:
                message, seconds = self._connection.recv()
            except (EOFError, OSError):
                return None
            if message == "ready":
                self.ready_after = seconds
        return self.ready_after

    def send(self, run: Run, payload: bytes) -> None:
        """Give the worker its one job; it starts as soon as its imports are done."""
        self._connection.send((str(run.path), payload))

    def retire(self, timeout: float = 5.0) -> None:
        """End an unused worker: closing its pipe tells it there is no job; killed if it lingers."""
        self._connection.close()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def serve(connection, preload: tuple[str, ...], environment: dict[str, str] | None = None,
          prebuild: tuple[str, int] | None = None) -> None:
    """The worker's main: set `environment`, import `preload`, say ready, build the
    `prebuild` backbone if no job came within `PREBUILD_AFTER` seconds, run the one job
    sent, exit. Nothing this module imports loads TensorFlow, so `environment` is in
    place before it is."""
    os.environ.update(environment or {})
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    started = time.monotonic()
    import_failure = None
    try:
        for name in preload:
            importlib.import_module(name)
    except BaseException:  # reported on the job it would have run
        import_failure = traceback.format_exc()
    try:
        connection.send(("ready", time.monotonic() - started))
        if prebuild is not None and import_failure is None and not connection.poll(PREBUILD_AFTER):
            _prebuild(*prebuild)
        run_path, payload = connection.recv()
    except (EOFError, OSError):  # retired, or the server went away
        return
    run_job(Run(Path(run_path)), payload, import_failure)


def _prebuild(name: str, image_size: int) -> None:
    from core.model import backbones  # imports Keras: only once `environment` is in place

    try:
        backbones.prebuild(name, image_size)
    except Exception:  # weights offline, say: the job builds it and reports that itself
        traceback.print_exc()


def run_job(run: Run, payload: bytes, import_failure: str | None = None) -> None:
    """Run one pickled job on `run` and record its outcome in the run folder: finished,
    stopped (a stop was requested) or failed (with the error and hint). Never raises."""
    progress = FileProgress(run)
    try:
        progress.start()
        run.log(f"Job started in worker process {os.getpid()}.")
        if import_failure is not None:
            raise RuntimeError(f"The worker could not import what jobs need:\n{import_failure}")
        fn = pickle.loads(payload)
        fn(run, progress)
    except BaseException as error:  # even sys.exit() in a job ends that job only
        # A UserError (a refused dataset, say) is the user's to fix: its message, no traceback.
        log = f"Failed: {error}" if isinstance(error, UserError) else traceback.format_exc()
        _record(run, FAILED, describe(error), log)
    else:
        outcome = STOPPED if progress.stop_requested else FINISHED
        _record(run, outcome, {}, f"Job {outcome}.")
    finally:
        try:
            progress.update(stage="ended")
        except (OSError, UserError):
            pass


def _record(run: Run, status: str, fields: dict, log: str) -> None:
    try:
        run.set_status(status, finished=time.time(), **fields)
        run.log(log)
    except (OSError, UserError):
        traceback.print_exc()  # the disk is failing: the server marks the run failed instead


def _exit_with_parent() -> None:
    """End this process as soon as the process that started it is gone."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
