"""The job queue and its worker processes: ordering, stopping, "Stop now", crashes,
failures, progress across the process boundary, and the server's memory.

Jobs here are module-level functions (a worker process unpickles them by name); the
managers preload nothing, so a worker starts in a fraction of a second.
"""
import errno
import functools
import json
import os
import signal
import sys
import time

import pytest

from core.config import DataConfig, ModelConfig, RunConfig
from core.errors import UserError
from core.training.jobs import JobManager
from core.training.progress import FileProgress, Progress, ProgressRecord, RunProgress
from core.training.runs import Run
from core.training.worker import PREBUILD_AFTER, Worker, exit_reason, pinned_environment

TIMEOUT = 60


@pytest.fixture
def manager():
    manager = JobManager(workers=1, preload=())
    yield manager
    manager.close()


@pytest.fixture
def make_run(tmp_path):
    return lambda: Run.create(tmp_path / "runs", RunConfig())


def wait_for(condition, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- jobs (module level: a worker process imports them by name) ------------------

def blocking(run, progress):
    """Wait until the test creates `release` in the run folder."""
    (run.path / "started").touch()
    while not (run.path / "release").exists():
        time.sleep(0.02)


def until_stopped(run, progress):
    """Count batches until a stop is requested, as a training loop does."""
    batch = 0
    while not progress.stop_requested:
        batch += 1
        progress.update(stage="training", batch=batch)
        time.sleep(0.01)


def stuck_in_a_long_batch(run, progress):
    """A batch that never ends: only "Stop now" can end this job."""
    progress.update(stage="training", batch=1, batches=10)
    run.append_history({"phase": "head", "epoch": 1, "loss": 0.5})
    (run.path / "started").touch()
    time.sleep(3600)


def log_line(run, progress, text="ran"):
    run.log(text)


def broken(run, progress):
    raise ZeroDivisionError("division by zero")


def needs_data(run, progress):
    raise UserError("Folder /data/cats has no images.", "Add .jpg files and try again.")


def hard_exit(run, progress):
    progress.update(stage="training", batch=1)
    os._exit(3)


def sigkill_self(run, progress):
    (run.path / "started").touch()
    os.kill(os.getpid(), signal.SIGKILL)


def report_pid(run, progress):
    run.write_json("pid.json", {"pid": os.getpid(), "parent": os.getppid()})


class DiskFullModel:
    def save(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")


def save_on_full_disk(run, progress):
    run.save_model(DiskFullModel(), "final")


def update_progress(run, progress):
    progress.update(phase="head", epoch=1, epochs=3, metrics={"loss": 0.5})
    blocking(run, progress)


# --- tests -------------------------------------------------------------------

def test_second_job_waits_for_the_first(manager, make_run):
    first_run, second_run = make_run(), make_run()
    first = manager.submit(first_run, blocking)
    second = manager.submit(second_run, functools.partial(log_line, text="second ran"))
    wait_for(lambda: (first_run.path / "started").exists())

    assert manager.current() is first and first.state == "running"
    assert manager.queued() == [second] and second.state == "queued"
    assert first_run.status()["status"] == "running"
    assert second_run.status()["status"] == "queued"
    assert not manager.wait(timeout=0.05)

    (first_run.path / "release").touch()
    assert manager.wait(TIMEOUT)
    assert (first.state, second.state) == ("done", "done")
    assert manager.current() is None and manager.queued() == []
    assert first_run.status()["status"] == second_run.status()["status"] == "finished"
    assert second_run.status()["started"] >= first_run.status()["finished"]
    assert "second ran" in second_run.read_log()
    assert manager.get(first_run.id) is first


def test_each_job_runs_in_its_own_spawned_process(manager, make_run):
    first, second = make_run(), make_run()
    manager.submit(first, report_pid)
    manager.submit(second, report_pid)
    assert manager.wait(TIMEOUT)
    pids = [run.read_json("pid.json") for run in (first, second)]
    assert {p["parent"] for p in pids} == {os.getpid()}
    assert len({p["pid"] for p in pids} | {os.getpid()}) == 3


def test_two_workers_run_two_jobs_at_once(make_run):
    manager = JobManager(workers=2, preload=())
    try:
        both = [make_run(), make_run()]
        for run in both:
            manager.submit(run, blocking)
        wait_for(lambda: all((run.path / "started").exists() for run in both))
        assert len(manager.running()) == 2
        for run in both:
            (run.path / "release").touch()
        assert manager.wait(TIMEOUT)
        assert [run.status()["status"] for run in both] == ["finished", "finished"]
    finally:
        manager.close()


def test_a_warm_worker_is_ready_before_a_job_is_submitted(manager):
    worker = manager.warm_worker()
    assert worker is not None and worker.is_alive()
    assert worker.wait_ready(TIMEOUT) is not None and worker.wait_ready() >= 0


def test_stop_running_job(manager, make_run):
    run = make_run()
    job = manager.submit(run, until_stopped)
    wait_for(lambda: (job.progress.snapshot().batch or 0) >= 1)
    assert manager.stop(run.id)
    assert manager.wait(TIMEOUT)
    assert job.state == "done"
    assert job.progress.snapshot().batch >= 1
    assert run.status()["status"] == "stopped"
    assert not manager.stop(run.id)


def test_stop_now_ends_a_job_stuck_in_a_long_batch_and_leaves_it_stopped(manager, make_run):
    run, next_run = make_run(), make_run()
    job = manager.submit(run, stuck_in_a_long_batch)
    manager.submit(next_run, log_line)
    wait_for(lambda: (run.path / "started").exists())
    assert manager.stop(run.id)
    time.sleep(0.5)
    assert job.state == "running", "a batch that does not end cannot stop by itself"

    assert manager.kill(run.id)
    assert manager.wait(TIMEOUT)
    status = run.status()
    assert status["status"] == "stopped" and status["stopped_now"] is True
    assert [record["epoch"] for record in run.history()] == [1]
    assert "Stopped now" in run.read_log() and "SIGKILL" in run.read_log()
    assert next_run.status()["status"] == "finished"


def test_stop_queued_job_never_runs_it(manager, make_run):
    first = make_run()
    manager.submit(first, blocking)
    queued_run = make_run()
    queued = manager.submit(queued_run, log_line)
    wait_for(lambda: (first.path / "started").exists())

    assert manager.stop(queued_run.id)
    assert manager.queued() == [] and queued.state == "done"
    assert queued_run.status()["status"] == "stopped"
    (first.path / "release").touch()
    assert manager.wait(TIMEOUT)
    assert "ran" not in queued_run.read_log()
    assert queued_run.status()["status"] == "stopped"


def test_failing_job_records_error_and_next_job_runs(manager, make_run):
    failed_run, next_run = make_run(), make_run()
    job = manager.submit(failed_run, broken)
    manager.submit(next_run, log_line)
    assert manager.wait(TIMEOUT)

    status = failed_run.status()
    assert status["status"] == "failed"
    assert status["error"] == job.error == "ZeroDivisionError: division by zero"
    assert "Traceback" in failed_run.read_log() and "broken" in failed_run.read_log()
    assert next_run.status()["status"] == "finished"


@pytest.mark.parametrize("job, reason", [(hard_exit, "exit code 3"), (sigkill_self, "killed by signal SIGKILL")])
def test_a_worker_that_dies_fails_its_run_with_the_reason_and_the_next_job_runs(manager, make_run, job, reason):
    dead, next_run = make_run(), make_run()
    manager.submit(dead, job)
    manager.submit(next_run, log_line)
    assert manager.wait(TIMEOUT)
    status = dead.status()
    assert status["status"] == "failed"
    assert status["error"] == f"The worker process died ({reason}) before the job ended."
    assert "Out of memory" in status["hint"]
    assert next_run.status()["status"] == "finished" and "ran" in next_run.read_log()


def test_a_worker_killed_from_outside_fails_its_run(manager, make_run):
    run = make_run()
    job = manager.submit(run, blocking)
    wait_for(lambda: (run.path / "started").exists())
    os.kill(run.status()["worker_pid"], signal.SIGKILL)
    assert manager.wait(TIMEOUT)
    assert run.status()["status"] == "failed" and "SIGKILL" in job.error


def test_user_error_keeps_message_and_hint(manager, make_run):
    run = make_run()
    job = manager.submit(run, needs_data)
    assert manager.wait(TIMEOUT)
    status = run.status()
    assert (status["error"], status["hint"]) == ("Folder /data/cats has no images.",
                                                 "Add .jpg files and try again.")
    assert "Folder /data/cats" in job.error


def test_failed_final_save_is_never_finished(manager, make_run):
    run = make_run()
    manager.submit(run, save_on_full_disk)
    assert manager.wait(TIMEOUT)
    status = run.status()
    assert status["status"] == "failed"
    assert "No space left" in status["error"] and str(run.path) in status["error"]
    assert not run.model_path("final").exists()


def test_resubmitting_an_active_run_is_refused(manager, make_run):
    run = make_run()
    manager.submit(run, blocking)
    with pytest.raises(UserError, match="already"):
        manager.submit(run, log_line)
    (run.path / "release").touch()
    assert manager.wait(TIMEOUT)


def test_a_job_that_cannot_be_pickled_is_refused_at_once(manager, make_run):
    run = make_run()
    with pytest.raises(TypeError, match="module-level function"):
        manager.submit(run, lambda run, progress: None)
    assert manager.get(run.id) is None


def test_progress_crosses_the_process_boundary_through_the_run_folder(manager, make_run):
    run = make_run()
    job = manager.submit(run, update_progress)
    wait_for(lambda: (run.path / "started").exists())
    snapshot = job.progress.snapshot()
    assert (snapshot.phase, snapshot.epoch, snapshot.metrics) == ("head", 1, {"loss": 0.5})
    assert snapshot.elapsed_seconds >= 0 and not snapshot.stop_requested
    assert RunProgress(Run(run.path)).snapshot().epoch == 1  # any process reads the same
    (run.path / "release").touch()
    assert manager.wait(TIMEOUT)
    assert job.progress.snapshot().stage == "ended"


def test_file_progress_writes_stage_changes_at_once_and_throttles_batches(make_run):
    run = make_run()
    progress = FileProgress(run, interval=60)
    progress.start()
    progress.update(stage="training", batch=1)
    progress.update(batch=2)  # within the interval: not written yet
    assert (run.progress()["stage"], run.progress()["batch"]) == ("training", 1)
    progress.update(stage="saving models")
    assert (run.progress()["stage"], run.progress()["batch"]) == ("saving models", 2)
    assert not progress.stop_requested
    run.request_stop()  # as another process would
    assert progress.stop_requested and RunProgress(run).snapshot().stop_requested


def test_progress_snapshots_are_copies():
    progress = Progress()
    progress.update(metrics={"loss": 0.5})
    snapshot = progress.snapshot()
    snapshot.metrics["loss"] = 99.0
    assert progress.snapshot().metrics == {"loss": 0.5}


def test_the_progress_record_is_typed_and_round_trips_through_json(make_run):
    progress = Progress()
    with pytest.raises(TypeError):
        progress.update(stagee="training")  # a typo is refused, not written
    run = make_run()
    written = FileProgress(run)
    written.update(stage="training", phase="head", epoch=2, batch=3, batches=10, metrics={"loss": 0.25})
    on_disk = run.progress()
    assert on_disk["stage"] == "training" and on_disk["metrics"] == {"loss": 0.25}
    assert "eta_seconds" not in on_disk  # never reported: not written
    read = ProgressRecord.from_dict(json.loads(json.dumps({**on_disk, "from_a_newer_writer": 1})))
    assert (read.stage, read.phase, read.epoch, read.batch, read.batches) == ("training", "head", 2, 3, 10)
    assert read.to_dict() == on_disk


def test_an_unused_worker_retires_cleanly():
    worker = Worker(preload=())
    assert worker.wait_ready(TIMEOUT) is not None
    worker.retire()
    assert worker.process.exitcode == 0


def test_exit_reasons_are_words():
    assert exit_reason(-9) == "killed by signal SIGKILL"
    assert exit_reason(1) == "exit code 1"
    assert exit_reason(None) == "still running"


def test_the_worker_count_comes_from_tl_workers(monkeypatch):
    from core import settings

    monkeypatch.setenv("TL_WORKERS", "3")
    assert settings.workers() == 3
    monkeypatch.setenv("TL_WORKERS", "none")
    with pytest.raises(ValueError, match="TL_WORKERS"):
        settings.workers()


def test_the_next_worker_warms_up_after_the_job_not_while_it_runs(manager, make_run):
    run = make_run()
    job = manager.submit(run, until_stopped)
    wait_for(lambda: (job.progress.snapshot().batch or 0) >= 1)
    assert manager.warm_worker() is None, "a worker starting up would take CPU from the running job"
    assert manager.stop(run.id) and manager.wait(TIMEOUT)
    worker = manager.warm_worker()
    assert worker is not None and worker.is_alive() and worker.wait_ready(TIMEOUT) is not None
    assert worker.pid != job.run.status()["worker_pid"]


def record_prebuilt(run, progress):
    """Write the backbones this worker had prebuilt when its job started."""
    from core.model import backbones

    (run.path / "prebuilt.json").write_text(json.dumps(sorted(backbones._PREBUILT)))


def test_an_idle_warm_worker_prebuilds_the_last_jobs_backbone_and_one_sent_at_once_does_not_wait(manager, tmp_path):
    imagenet = Run.create(tmp_path / "runs", RunConfig(data=DataConfig(image_size=128),
                                                       model=ModelConfig(backbone="MobileNet")))
    manager.submit(imagenet, log_line)
    assert manager.wait(TIMEOUT)
    worker = manager.warm_worker()
    assert worker.prebuild == ("MobileNet", 128)
    sent_at_once = Run.create(tmp_path / "runs", imagenet.config)  # fine-tuning straight after the head, say
    manager.submit(sent_at_once, record_prebuilt)
    assert manager.wait(TIMEOUT) and json.loads((sent_at_once.path / "prebuilt.json").read_text()) == []

    idle = manager.warm_worker()
    assert idle.wait_ready(TIMEOUT) is not None
    time.sleep(PREBUILD_AFTER + 0.5)  # a user changing a head setting: the worker builds the backbone meanwhile
    later = Run.create(tmp_path / "runs", imagenet.config)
    manager.submit(later, record_prebuilt)
    assert manager.wait(TIMEOUT) and json.loads((later.path / "prebuilt.json").read_text()) == [["MobileNet", 128]]

    scratch = Run.create(tmp_path / "runs", RunConfig(model=ModelConfig(weights="none")))
    manager.submit(scratch, log_line)
    assert manager.wait(TIMEOUT) and manager.warm_worker().prebuild is None  # random weights: nothing to prebuild


def test_a_new_managers_first_worker_prebuilds_the_backbone_it_was_given(tmp_path):
    manager = JobManager(workers=1, preload=(), prebuild=("MobileNet", 128))  # the dashboard gives its default's
    try:
        worker = manager.warm_worker()
        assert worker.prebuild == ("MobileNet", 128) and worker.wait_ready(TIMEOUT) is not None
        time.sleep(PREBUILD_AFTER + 0.5)  # a user choosing the data before the first Start
        first = Run.create(tmp_path / "runs", RunConfig(data=DataConfig(image_size=128),
                                                        model=ModelConfig(backbone="MobileNet")))
        manager.submit(first, record_prebuilt)
        assert manager.wait(TIMEOUT) and json.loads((first.path / "prebuilt.json").read_text()) == [["MobileNet", 128]]
    finally:
        manager.close()


# --- GPU pinning: with several workers, job slot i gets GPU i mod count ----------------

def record_environment(run, progress):
    """Write the GPUs the worker was given (and whether anything loaded TensorFlow before
    the job), then wait for `release` like `blocking`."""
    run.write_json("environment.json", {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                         "tensorflow_loaded": "tensorflow" in sys.modules})
    blocking(run, progress)


def test_pinned_environment_gives_slot_i_gpu_i_mod_count():
    assert [pinned_environment(slot, ["0", "1"]) for slot in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"}, {"CUDA_VISIBLE_DEVICES": "0"}]
    assert pinned_environment(1, ["GPU-5e1c"]) == {"CUDA_VISIBLE_DEVICES": "GPU-5e1c"}
    assert pinned_environment(2, []) == {}  # no GPU: the worker keeps the server's environment


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", []), ("-1", []), ("2,3", ["2", "3"]), (" 2, 3 ,", ["2", "3"]), ("1,-1,2", ["1"]),
])
def test_cuda_visible_devices_is_read_as_cuda_reads_it(monkeypatch, value, expected):
    from core import settings

    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert settings.cuda_visible_devices() == expected


def test_each_worker_is_pinned_to_a_free_gpu_before_its_imports(make_run, monkeypatch):
    """The server sees GPUs 4 and 7 (its CUDA_VISIBLE_DEVICES); with two workers each job
    runs on one of them, and a job queued while GPU 4 is busy gets GPU 7 when 7 frees,
    even though the warm worker had been started for GPU 4."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    manager = JobManager(workers=2, preload=())
    try:
        first, second = make_run(), make_run()
        for run in (first, second):
            manager.submit(run, record_environment)
        wait_for(lambda: all((run.path / "started").exists() for run in (first, second)))
        assert [run.read_json("environment.json") for run in (first, second)] == [
            {"cuda": "4", "tensorflow_loaded": False}, {"cuda": "7", "tensorflow_loaded": False}]
        (second.path / "release").touch()
        wait_for(lambda: second.status()["status"] == "finished" and len(manager.running()) == 1)
        third = make_run()
        manager.submit(third, record_environment)
        wait_for(lambda: (third.path / "started").exists())
        assert third.read_json("environment.json")["cuda"] == "7"  # GPU 4 is still the first job's
        for run in (first, third):
            (run.path / "release").touch()
        assert manager.wait(TIMEOUT)
        assert [run.status()["status"] for run in (first, second, third)] == ["finished"] * 3
    finally:
        manager.close()


def test_one_worker_sees_every_gpu_the_server_sees(make_run, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")  # read when the worker is spawned
    fresh = JobManager(workers=1, preload=())
    try:
        run = make_run()
        fresh.submit(run, record_environment)
        wait_for(lambda: (run.path / "started").exists())
        assert run.read_json("environment.json")["cuda"] == "4,7"  # MirroredStrategy trains on both
        (run.path / "release").touch()
        assert fresh.wait(TIMEOUT)
    finally:
        fresh.close()
