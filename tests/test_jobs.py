"""The background job runner: ordering, stopping, failures, progress and memory release."""
import errno
import gc
import sys
import threading
import types
import weakref

import pytest

from core.config import RunConfig
from core.errors import UserError
from core.training.jobs import JobManager, Progress
from core.training.runs import Run

TIMEOUT = 10


@pytest.fixture
def manager():
    return JobManager()


@pytest.fixture
def make_run(tmp_path):
    return lambda: Run.create(tmp_path / "runs", RunConfig())


def _blocking_job(started: threading.Event, release: threading.Event):
    def fn(run, progress):
        started.set()
        assert release.wait(TIMEOUT)
    return fn


def _until_stopped(started: threading.Event):
    def fn(run, progress):
        started.set()
        while not progress.stop_requested:
            progress.update(batch=progress.snapshot().get("batch", 0) + 1)
    return fn


def test_second_job_waits_for_the_first(manager, make_run):
    first_run, second_run = make_run(), make_run()
    started, release = threading.Event(), threading.Event()
    first = manager.submit(first_run, _blocking_job(started, release))
    second = manager.submit(second_run, lambda run, progress: run.log("second ran"))
    assert started.wait(TIMEOUT)

    assert manager.current() is first and first.state == "running"
    assert manager.queued() == [second] and second.state == "queued"
    assert first_run.status()["status"] == "running"
    assert second_run.status()["status"] == "queued"
    assert not manager.wait(timeout=0.05)

    release.set()
    assert manager.wait(TIMEOUT)
    assert (first.state, second.state) == ("done", "done")
    assert manager.current() is None and manager.queued() == []
    assert first_run.status()["status"] == second_run.status()["status"] == "finished"
    assert second_run.status()["started"] >= first_run.status()["finished"]
    assert "second ran" in second_run.read_log()
    assert manager.get(first_run.id) is first


def test_stop_running_job(manager, make_run):
    run, started = make_run(), threading.Event()
    job = manager.submit(run, _until_stopped(started))
    assert started.wait(TIMEOUT)
    assert manager.stop(run.id)
    assert manager.wait(TIMEOUT)
    assert job.state == "done"
    assert job.progress.snapshot()["batch"] >= 1
    assert run.status()["status"] == "stopped"
    assert not manager.stop(run.id)


def test_stop_queued_job_never_runs_it(manager, make_run):
    started, release = threading.Event(), threading.Event()
    manager.submit(make_run(), _blocking_job(started, release))
    queued_run, ran = make_run(), threading.Event()
    queued = manager.submit(queued_run, lambda run, progress: ran.set())
    assert started.wait(TIMEOUT)

    assert manager.stop(queued_run.id)
    assert manager.queued() == [] and queued.state == "done"
    assert queued_run.status()["status"] == "stopped"
    release.set()
    assert manager.wait(TIMEOUT)
    assert not ran.is_set()
    assert queued_run.status()["status"] == "stopped"


def test_failing_job_records_error_and_next_job_runs(manager, make_run):
    def broken(run, progress):
        raise ZeroDivisionError("division by zero")

    failed_run, next_run = make_run(), make_run()
    job = manager.submit(failed_run, broken)
    manager.submit(next_run, lambda run, progress: None)
    assert manager.wait(TIMEOUT)

    status = failed_run.status()
    assert status["status"] == "failed"
    assert status["error"] == job.error == "ZeroDivisionError: division by zero"
    assert "Traceback" in failed_run.read_log() and "broken" in failed_run.read_log()
    assert next_run.status()["status"] == "finished"


def test_user_error_keeps_message_and_hint(manager, make_run):
    def needs_data(run, progress):
        raise UserError("Folder /data/cats has no images.", "Add .jpg files and try again.")

    run = make_run()
    job = manager.submit(run, needs_data)
    assert manager.wait(TIMEOUT)
    status = run.status()
    assert (status["error"], status["hint"]) == ("Folder /data/cats has no images.",
                                                 "Add .jpg files and try again.")
    assert "Add .jpg files" in job.error


def test_failed_final_save_is_never_finished(manager, make_run):
    class DiskFullModel:
        def save(self, path):
            raise OSError(errno.ENOSPC, "No space left on device")

    run = make_run()
    manager.submit(run, lambda run, progress: run.save_model(DiskFullModel(), "final"))
    assert manager.wait(TIMEOUT)
    status = run.status()
    assert status["status"] == "failed"
    assert "No space left" in status["error"] and str(run.path) in status["error"]
    assert not run.model_path("final").exists()


def test_resubmitting_an_active_run_is_refused(manager, make_run):
    run, started, release = make_run(), threading.Event(), threading.Event()
    manager.submit(run, _blocking_job(started, release))
    with pytest.raises(UserError, match="already"):
        manager.submit(run, lambda run, progress: None)
    release.set()
    assert manager.wait(TIMEOUT)


def test_progress_snapshots_from_another_thread(manager, make_run):
    updated, release = threading.Event(), threading.Event()

    def train(run, progress):
        progress.update(phase="head", epoch=1, epochs=3, metrics={"loss": 0.5})
        updated.set()
        assert release.wait(TIMEOUT)

    job = manager.submit(make_run(), train)
    assert updated.wait(TIMEOUT)
    snapshot = job.progress.snapshot()
    assert (snapshot["phase"], snapshot["epoch"], snapshot["metrics"]) == ("head", 1, {"loss": 0.5})
    assert snapshot["elapsed_seconds"] >= 0 and not snapshot["stop_requested"]
    snapshot["metrics"]["loss"] = 99.0
    assert job.progress.snapshot()["metrics"] == {"loss": 0.5}
    release.set()
    assert manager.wait(TIMEOUT)


def test_progress_updates_are_never_seen_half_done():
    progress, done = Progress(), threading.Event()

    def write():
        for step in range(20000):
            progress.update(batch=step, metrics={"step": step})
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    while not done.is_set():
        snapshot = progress.snapshot()
        if "batch" in snapshot:
            assert snapshot["metrics"]["step"] == snapshot["batch"]
    writer.join()
    assert progress.snapshot()["batch"] == 19999


def test_finished_job_releases_its_work_and_clears_keras(manager, make_run, monkeypatch):
    cleared = []
    fake_keras = types.SimpleNamespace(backend=types.SimpleNamespace(clear_session=lambda: cleared.append(1)))
    monkeypatch.setitem(sys.modules, "keras", fake_keras)

    class BigModel:
        pass

    model = BigModel()
    model_ref = weakref.ref(model)
    manager.submit(make_run(), lambda run, progress, model=model: None)
    del model
    assert manager.wait(TIMEOUT)
    gc.collect()
    assert model_ref() is None
    assert cleared == [1]
