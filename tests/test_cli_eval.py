"""The headless CLI end to end: train a tiny run, then `evaluate` and `predict` with it.

One run (3 colour classes x 12 images at 96 px, MobileNetV2 with the real
ImageNet weights) is trained once for the module; every expected number is
recomputed here with `core.results.evaluation` on the saved model.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import datasets
from core.results import evaluation
from core.training import runs
from core.workflow import load_run_model

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 220)}
IMAGES_PER_CLASS = 12


def write_colour_folder(folder: Path, colours=COLOURS, per_class=IMAGES_PER_CLASS) -> Path:
    """<folder>/<colour>/<n>.png: noisy 64 px squares of one colour per class."""
    rng = np.random.default_rng(0)
    for name, colour in colours.items():
        (folder / name).mkdir(parents=True)
        for n in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / name / f"{n:02d}.png")
    return folder


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_colour_folder(tmp_path_factory.mktemp("cli-data") / "colours")


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> dict:
    """The JSON `python -m core train` printed for the module's one run."""
    result = cli("train", "--data", data, "--head-epochs", 2, "--fine-tune-epochs", 1, "--fine-tune-at", 140,
                 "--image-size", 96, "--runs-dir", tmp_path_factory.mktemp("cli-runs"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def run(trained) -> runs.Run:
    return runs.Run(trained["run_dir"])


def test_train_writes_a_finished_run_with_both_phases(trained, run):
    assert trained["status"] == runs.FINISHED == run.status()["status"]
    assert [record["phase"] for record in run.history()] == ["head", "head", "fine_tune"]
    assert run.config.data.image_size == 96 and run.config.fine_tune.fine_tune_at == "140"
    assert all(run.model_path(kind).is_file() for kind in runs.MODEL_KINDS)
    metrics = run.read_json("metrics.json")
    assert trained["test_accuracy"] == metrics["fine_tune"]["test_accuracy"]
    assert trained["head_test_accuracy"] == metrics["head"]["test_accuracy"]


def test_evaluate_reports_consistent_scores_that_match_core(data, run):
    result = cli("evaluate", run.path, "--data", data)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)

    matrix = np.array(report["confusion_matrix"])
    assert report["images"] == matrix.sum() == len(COLOURS) * IMAGES_PER_CLASS
    assert report["accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert [row["support"] for row in report["per_class"]] == matrix.sum(axis=1).tolist()
    assert [row["class"] for row in report["per_class"]] == report["class_names"] == sorted(COLOURS)
    assert report["skipped"] == []

    model, classes = load_run_model(run, "final")
    images, labels, _ = datasets.load_labelled(data, classes, 96)
    expected = evaluation.evaluate(model, images, labels, classes)
    assert report["confusion_matrix"] == expected["confusion_matrix"]
    assert report["loss"] == pytest.approx(expected["loss"], rel=1e-4)


def test_evaluate_refuses_a_folder_with_classes_the_model_does_not_know(run, tmp_path):
    folder = write_colour_folder(tmp_path / "other", {"red": COLOURS["red"], "purple": (150, 40, 200)}, per_class=2)
    result = cli("evaluate", run.path, "--data", folder)
    assert result.returncode == 2
    assert "classes the model does not know: purple" in result.stderr
    assert result.stdout == ""


def test_predict_gives_probabilities_and_an_error_entry_per_bad_file(run, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((80, 80, 3), COLOURS["red"], dtype="uint8")).save(good)
    bad = tmp_path / "bad.txt"
    bad.write_text("not pixels")
    missing = tmp_path / "missing.png"

    result = cli("predict", run.path, good, bad, missing)
    assert result.returncode == 0, result.stderr
    good_entry, bad_entry, missing_entry = json.loads(result.stdout)

    classes = run.read_json("classes.json")
    probabilities = good_entry["probabilities"]
    assert list(probabilities) == classes
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert good_entry["label"] == max(probabilities, key=probabilities.get)
    assert good_entry["file"] == str(good)
    assert bad_entry == {"file": str(bad), "error": "not an image"}
    assert missing_entry["file"] == str(missing) and "cannot read file" in missing_entry["error"]
