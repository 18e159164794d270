"""Training jobs end to end on tiny data: run directories, queueing, stop, NaN,
interrupted runs, and a reloaded run reproducing its results."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from core import workflow
from core.config import DataConfig, RunConfig, TrainConfig
from core.results import evaluation, export
from core.training import runs
from core.training.jobs import JobManager

SIZE = 96
DATA = DataConfig(image_size=SIZE, val_fraction=0.15, test_fraction=0.15, batch_size=32)


def config(**changes) -> RunConfig:
    base = RunConfig(data=DATA, head=TrainConfig(epochs=2, views=1), fine_tune=TrainConfig(
        epochs=1, learning_rate=1e-4, fine_tune_at="120", views=1))
    return RunConfig(**{**vars(base), **changes})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    manager = JobManager()
    run = runs.Run.create(tmp_path_factory.mktemp("runs"), config())
    manager.submit(run, workflow.full_job)
    assert manager.wait(timeout=600)
    return run


def test_a_run_directory_describes_the_whole_run(finished_run):
    run = finished_run
    assert run.status()["status"] == runs.FINISHED
    for kind in ("head", "best", "final"):
        assert run.model_path(kind).is_file()
    assert run.read_json(workflow.CLASSES_FILE) == ["circle", "square", "star", "triangle"]
    history = run.history()
    assert [(r["phase"], r["epoch"]) for r in history] == [("head", 1), ("head", 2), ("fine_tune", 3)]
    metrics = run.read_json("metrics.json")
    assert set(metrics) == {"initial", "head", "fine_tune"}
    assert metrics["head"]["path"] == "features" and metrics["fine_tune"]["path"] == "features"
    assert runs.Run(run.path).config == run.config  # reloads as the same config


def test_a_reloaded_run_reproduces_its_test_accuracy(finished_run):
    model, classes = workflow.load_run_model(finished_run, "final")
    data = workflow.load_data(finished_run.config.data)
    images, labels = data.splits["test"]
    scores = evaluation.evaluate(model, images, labels, classes)
    assert scores["accuracy"] == pytest.approx(finished_run.read_json("metrics.json")["fine_tune"]["test_accuracy"])
    head, _ = workflow.load_run_model(finished_run, "head")
    head_scores = evaluation.evaluate(head, images, labels, classes)
    assert head_scores["accuracy"] == pytest.approx(finished_run.read_json("metrics.json")["head"]["test_accuracy"])


def test_fine_tuning_a_run_again_starts_over_from_its_head(finished_run, monkeypatch):
    """Fine-tune a finished run again: it starts from head.keras, not from the fine-tuned model,
    and its epochs replace the earlier fine-tuning's (the curve does not grow)."""
    from pathlib import Path

    from core.training.progress import Progress

    before = finished_run.model_path("final").read_bytes()
    loaded, load = [], export.load_model_safe
    monkeypatch.setattr(workflow.export, "load_model_safe", lambda path: loaded.append(Path(path).name) or load(path))
    workflow.fine_tune_job(finished_run, Progress())
    assert loaded[0] == "head.keras"
    assert [(r["phase"], r["epoch"]) for r in finished_run.history()] == [("head", 1), ("head", 2), ("fine_tune", 3)]
    assert finished_run.read_json("metrics.json")["fine_tune"]["epochs"] == 1
    assert finished_run.model_path("final").read_bytes() != before


def test_jobs_queue_and_run_one_at_a_time(tmp_path):
    manager = JobManager()
    first = runs.Run.create(tmp_path, config(fine_tune=None))
    second = runs.Run.create(tmp_path, config(fine_tune=None))
    manager.submit(first, workflow.head_job)
    manager.submit(second, workflow.head_job)
    assert [job.run_id for job in manager.queued()] in ([second.id], [first.id, second.id])
    assert manager.wait(timeout=600)
    a, b = first.status(), second.status()
    assert a["status"] == b["status"] == runs.FINISHED
    assert b["started"] >= a["finished"]
    # Neither run's results are mixed with the other's.
    assert {r["phase"] for r in first.history()} == {"head"} and len(first.history()) == 2
    assert len(second.history()) == 2


def test_stop_keeps_the_best_weights_so_far(tmp_path):
    manager = JobManager()
    run = runs.Run.create(tmp_path, config(head=TrainConfig(epochs=200, views=1, fast_path=False), fine_tune=None))
    job = manager.submit(run, workflow.head_job)
    deadline = time.time() + 300
    while not run.history() and time.time() < deadline:
        time.sleep(0.2)
    manager.stop(run.id)
    assert manager.wait(timeout=300)
    assert job.progress.stop_requested
    assert run.status()["status"] == runs.STOPPED
    assert 1 <= len(run.history()) < 200
    model = export.load_model_safe(run.model_path("best"))
    assert model.get_layer("logits").units == 4


def test_nan_loss_fails_the_run_with_a_message(tmp_path):
    manager = JobManager()
    run = runs.Run.create(tmp_path, config(head=TrainConfig(epochs=2, optimizer="sgd", learning_rate=1e38, views=1),
                                           fine_tune=None))
    manager.submit(run, workflow.head_job)
    assert manager.wait(timeout=300)
    status = run.status()
    assert status["status"] == runs.FAILED
    assert "NaN" in status["error"] and "learning rate" in status["hint"]


def test_fine_tuning_needs_a_trained_head(tmp_path):
    manager = JobManager()
    run = runs.Run.create(tmp_path, config())
    manager.submit(run, workflow.fine_tune_job)
    assert manager.wait(timeout=300)
    assert run.status()["status"] == runs.FAILED
    assert "Train the head first" in run.status()["hint"]


def test_comparison_configs_follow_the_flowers_blog():
    configs = workflow.comparison_configs(config(), epochs=3)
    scratch, frozen, tuned = configs["from scratch"], configs["transfer (frozen)"], configs["fine-tuned"]
    assert scratch.model.weights == "none" and scratch.head.fine_tune_at == "all" and scratch.fine_tune is None
    assert frozen.model.weights == "imagenet" and frozen.head.fine_tune_at is None and frozen.fine_tune is None
    assert tuned.fine_tune.fine_tune_at == "all"
    assert tuned.fine_tune.learning_rate == pytest.approx(tuned.head.learning_rate / 10)
    assert {c.head.epochs for c in configs.values()} == {3} and tuned.fine_tune.epochs == 3


def test_a_killed_server_leaves_an_interrupted_run_with_its_history_and_model(tmp_path):
    data_dir = tmp_path / "data"
    from core.data import demo_data

    demo_data.generate(data_dir, images_per_class=30)
    command = [sys.executable, "-m", "core", "train", "--data", str(data_dir), "--image-size", str(SIZE),
               "--head-epochs", "1", "--fine-tune-epochs", "500", "--fine-tune-at", "all",
               "--runs-dir", str(tmp_path / "runs")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            found = list((tmp_path / "runs").glob("*/history.jsonl"))
            if found and any('"fine_tune"' in line for line in found[0].read_text().splitlines()):
                break
            time.sleep(0.3)
        else:
            pytest.fail("the fine-tuning epochs never started")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    run = runs.list_runs(tmp_path / "runs")[0]
    status = run.status()
    assert status["status"] == runs.INTERRUPTED
    history = run.history()
    assert history[0]["phase"] == "head" and history[1]["phase"] == "fine_tune"
    assert all(json.dumps(r) for r in history)
    model = export.load_model_safe(run.model_path("final"))  # the last good model (after the head)
    images = np.zeros((1, SIZE, SIZE, 3), "float32")
    assert model.predict(images, verbose=0).shape == (1, 4)


@pytest.mark.parametrize("restore_best", [True, False])
def test_best_and_final_models_hold_the_weights_restore_best_asks_for(tmp_path, restore_best):
    import keras

    from core.data.image_data import ImageData
    from core.training.phases import PhaseResult

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    best, final = ([np.full_like(w, value) for w in model.get_weights()] for value in (1.0, 2.0))
    result = PhaseResult(phase="head", path="features", trained=model, weights={"best": best, "final": final},
                         history=[{"epoch": 1, "val_accuracy": 0.9}, {"epoch": 2, "val_accuracy": 0.8}])
    empty = (np.zeros((0, 8, 8, 3), "uint8"), np.zeros(0, "int32"))
    data = ImageData(class_names=["a", "b"], splits={"test": empty}, description="")
    run = runs.Run.create(tmp_path, config())
    workflow.finish_phase(run, model, data, result, TrainConfig(restore_best=restore_best))

    kept = 1.0 if restore_best else 2.0
    saved = {kind: export.load_model_safe(run.model_path(kind)).get_weights()[0] for kind in ("best", "final", "head")}
    assert np.all(saved["best"] == 1.0)
    assert np.all(saved["final"] == kept) and np.all(saved["head"] == kept)
    assert np.all(model.get_weights()[0] == kept)  # the model in memory continues from the kept weights
