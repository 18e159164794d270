"""Data you can trust, where runs meet it (issue 11): the CLI's data report and
chance-level warning, `data_report.json`, data errors without tracebacks, and the
pages that show them (Data, Train head, Runs)."""
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import workflow
from core.config import DataConfig, RunConfig, TrainConfig
from core.data.report import REPORT_FILE
from core.training import runs
from core.training.jobs import JobManager

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
CLASSES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def at_chance(tmp_path_factory):
    """`python -m core train` on four classes of one and the same image (no model can
    beat chance), with one file that is not an image: (completed process, run)."""
    tmp = tmp_path_factory.mktemp("chance")
    same = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for name in CLASSES:
        (tmp / "data" / name).mkdir(parents=True)
        for i in range(8):
            same.save(tmp / "data" / name / f"{name}{i}.png")
    (tmp / "data" / "a" / "error_page.jpg").write_text("<html>404</html>")
    done = subprocess.run(
        [sys.executable, "-m", "core", "train", "--data", str(tmp / "data"), "--runs-dir", str(tmp / "runs"),
         "--weights", "none", "--image-size", "96", "--head-epochs", "1", "--fine-tune-epochs", "0",
         "--augment", "none"],
        capture_output=True, text=True, timeout=600, env={**os.environ},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, runs.Run(json.loads(done.stdout.strip().splitlines()[-1])["run_dir"])


def test_the_cli_prints_the_data_report_and_says_the_model_is_at_chance(at_chance):
    done, run = at_chance
    assert "skipped 1 file(s): 1 not an image" in done.stderr
    assert "train: 24 images" in done.stderr and "Leakage:" in done.stderr
    assert "warning: Validation accuracy 25.0% is at chance level" in done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "chance level" in result["chance_level_warning"]
    report = run.read_json(REPORT_FILE)
    assert report["counts"]["validation"] == {name: 1 for name in CLASSES}
    assert report["skipped"][0]["path"].endswith("error_page.jpg") and report["duplicate_count"] == 8


def test_the_train_head_page_warns_instead_of_congratulating(at_chance, monkeypatch):
    _, run = at_chance
    monkeypatch.setenv("TL_RUNS_DIR", str(run.path.parent))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["run_id"] = run.id
    at.run()
    at.switch_page("pages/train_head.py").run()
    assert not at.exception
    assert any("at chance level" in warning.value for warning in at.warning)
    assert not any("Head trained" in success.value for success in at.success)


def test_the_runs_page_shows_a_runs_data_report(at_chance, monkeypatch):
    _, run = at_chance
    monkeypatch.setenv("TL_RUNS_DIR", str(run.path.parent))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    tab = at.tabs[-1]
    assert tab.label == "Data"
    counts = tab.dataframe[0].value
    assert counts["train"].sum() == 24 and counts["validation"].tolist() == [1, 1, 1, 1]
    assert tab.dataframe[1].value["path"].str.endswith("error_page.jpg").tolist() == [True]
    assert len(tab.dataframe[2].value) == 8 and any("Leakage" in w.value for w in tab.warning)


def test_a_refused_dataset_is_a_data_error_without_a_traceback(tmp_path):
    (tmp_path / "data" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "only" / "x.png")
    run = runs.Run.create(tmp_path / "runs", RunConfig(data=DataConfig(source="folder", name="data"),
                                                         head=TrainConfig(epochs=1)))
    manager = JobManager()
    manager.submit(run, partial(workflow.head_job, data_root=tmp_path))
    assert manager.wait(timeout=120)
    status = run.status()
    assert status["status"] == runs.FAILED
    assert status["error"].startswith("Data refused before training:") and "at least two classes" in status["error"]
    assert status["hint"] and "Traceback" not in run.read_log()


def test_the_data_page_shows_duplicate_pairs_and_offers_to_drop_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_DATA_ROOT", str(tmp_path))
    rng = np.random.default_rng(1)
    for split in ("train", "validation"):
        for name in ("x", "y"):
            (tmp_path / "ds" / split / name).mkdir(parents=True)
            for i in range(5):
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "ds" / split / name / f"{split}{i}.png")
    copied = tmp_path / "ds" / "train" / "x" / "train0.png"
    (tmp_path / "ds" / "validation" / "x" / "copy.png").write_bytes(copied.read_bytes())
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["data_config"] = DataConfig(source="folder", name="ds", image_size=96)
    at.run()
    assert not at.exception
    assert any(m.value.startswith("#### Duplicates of training images in validation/test (1)") for m in at.markdown)
    captions = [c for image in at.image for c in image.captions]
    assert "train: train0.png" in captions and any(c.endswith("copy.png (byte-identical)") for c in captions)
    next(box for box in at.checkbox if box.label.startswith("Drop validation/test")).check()
    next(button for button in at.button if button.label == "Load dataset").click()
    at.run()
    assert at.session_state["data_config"].drop_duplicates
    assert any(m.value.startswith("#### Duplicates of training images in validation/test (0)") for m in at.markdown)
    assert any("Dropped 1" in w.value for w in at.warning)
