"""core.results.compare: the runs table and comparison rows, from run folders written here by hand."""
import datetime

import pytest

from core.config import DataConfig, RunConfig, TrainConfig
from core.results import compare
from core.training import runs
from core.training.progress import ProgressRecord

HISTORY = [
    {"phase": "head", "epoch": 1, "path": "features", "val_accuracy": 0.5, "val_loss": 0.9, "accuracy": 0.4, "loss": 1.1},
    {"phase": "head", "epoch": 2, "path": "features", "val_accuracy": 0.8, "val_loss": 0.6, "accuracy": 0.7, "loss": 0.7},
    {"phase": "fine_tune", "epoch": 3, "path": "full", "val_accuracy": 0.7, "val_loss": 0.5, "accuracy": 0.9, "loss": 0.3},
]
CONFIG = RunConfig(data=DataConfig(source="folder", name="/data/flowers", image_size=128), name="flowers",
                   head=TrainConfig(epochs=2), fine_tune=TrainConfig(epochs=1, learning_rate=1e-5, fine_tune_at="100"))


@pytest.fixture
def run(tmp_path) -> runs.Run:
    """A finished two-phase run folder with history, metrics and timings."""
    run = runs.Run.create(tmp_path, CONFIG)
    for record in HISTORY:
        run.append_history(record)
    run.write_json("metrics.json", {"head": {"test_accuracy": 0.75}, "fine_tune": {"test_accuracy": 0.85}})
    run.set_status(runs.FINISHED, created=1_700_000_000.0, seconds_head=4.0, seconds_fine_tune=8.5)
    return run


def test_run_row_describes_settings_scores_and_time(run):
    row = compare.run_row(run)
    assert row["run"] == run.id and row["name"] == "flowers" and row["status"] == runs.FINISHED
    assert (row["dataset"], row["backbone"], row["image size"]) == ("flowers", "MobileNetV2", 128)
    assert (row["head epochs"], row["head LR"], row["fine-tune epochs"], row["fine-tune LR"]) == (2, 1e-3, 1, 1e-5)
    config = run.config
    assert (row["head optimizer"], row["dropout"], row["hidden units"]) == (
        config.head.optimizer, config.model.dropout, config.model.hidden_units)  # what a quick try changes
    assert row["unfreeze"] == "100"
    assert row["training path"] == "features / full"
    assert row["best val accuracy"] == 0.8  # the best epoch, not the last
    assert row["test accuracy"] == 0.85  # after the last phase
    assert row["seconds"] == 12.5
    assert row["created"] == datetime.datetime.fromtimestamp(1_700_000_000.0)


def test_a_head_only_run_and_a_fresh_run(tmp_path):
    head_only = runs.Run.create(tmp_path, RunConfig(data=DataConfig(source="tfds", name="tf_flowers")))
    head_only.append_history(HISTORY[0])
    head_only.write_json("metrics.json", {"head": {"test_accuracy": 0.6}})
    head_only.set_status(runs.STOPPED, started=100.0, finished=130.0)
    row = compare.run_row(head_only)
    assert (row["dataset"], row["fine-tune epochs"], row["unfreeze"]) == ("tf_flowers", None, None)
    assert (row["test accuracy"], row["seconds"], row["training path"]) == (0.6, 30.0, "features")

    fresh = compare.run_row(runs.Run.create(tmp_path, RunConfig()))
    assert (fresh["status"], fresh["dataset"]) == (runs.QUEUED, "demo shapes")
    assert fresh["best val accuracy"] is fresh["test accuracy"] is fresh["seconds"] is None


def test_runs_table_keeps_an_unreadable_run_with_the_reason(run):
    broken = runs.Run.create(run.path.parent, RunConfig())
    (broken.path / runs.CONFIG_FILE).write_text("{not json")
    rows = {row["run"]: row for row in compare.runs_table(runs.list_runs(run.path.parent))}
    assert rows[run.id]["status"] == runs.FINISHED
    assert rows[broken.id]["status"] == "unreadable"
    assert "not a valid run configuration" in rows[broken.id]["error"]


def test_validation_curves_are_one_series_per_run():
    rows = compare.validation_curves({"a": HISTORY, "b": HISTORY[:1]})
    accuracy_a = [(r["epoch"], r["value"]) for r in rows if r["run"] == "a" and r["metric"] == "accuracy"]
    assert accuracy_a == [(1, 0.5), (2, 0.8), (3, 0.7)]
    assert [(r["metric"], r["value"]) for r in rows if r["run"] == "b"] == [("accuracy", 0.5), ("loss", 0.9)]


def test_comparison_table_has_time_per_epoch(run):
    [row] = compare.comparison_table({"fine-tuned": run})
    assert row == {"run": "fine-tuned", "epochs": 3, "best val accuracy": 0.8, "test accuracy": 0.85,
                   "seconds": 12.5, "seconds per epoch": pytest.approx(12.5 / 3, abs=0.01)}


def test_progress_text():
    record = ProgressRecord(stage="training", phase="head", epochs=5, epoch_in_phase=2)
    assert compare.progress_text(record) == "head: epoch 2 of 5"
    assert compare.progress_text(ProgressRecord(stage="extracting features")) == "extracting features"
    assert compare.progress_text(ProgressRecord()) == "starting"
