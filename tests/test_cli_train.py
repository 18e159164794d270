"""`python -m core train`: a configuration exported from the dashboard runs unchanged, and
without one the run fine-tunes with the Fine-tune page's defaults."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from core.__main__ import _run_config, make_parser

from core import config as config_io
from core.config import DataConfig, RunConfig, TrainConfig
from core.model.backbones import BACKBONES
from core.training import runs


def test_a_dashboard_config_runs_unchanged(tmp_path):
    root = tmp_path / "data-root"
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / "colours" / name).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (40, 40), tuple(max(0, c - 5 * i) for c in colour)).save(root / "colours" / name / f"{i}.png")
    exported = RunConfig(data=DataConfig(source="folder", name="colours", image_size=96, val_fraction=0.25,
                                         test_fraction=0.25),
                         head=TrainConfig(epochs=8, learning_rate=1e-2, views=1), fine_tune=None,
                         name="from the dashboard")
    path = tmp_path / "config.json"
    path.write_text(config_io.dumps(exported))

    done = subprocess.run(
        [sys.executable, "-m", "core", "train", "--config", str(path), "--runs-dir", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TL_DATA_ROOT": str(root)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "finished" and result["seconds_fine_tune"] == 0.0
    assert runs.Run(result["run_dir"]).config == exported
    assert result["head_val_accuracy"] == 1.0  # red against blue


def test_bad_arguments_are_user_errors(tmp_path):
    done = subprocess.run([sys.executable, "-m", "core", "train", "--data", str(tmp_path / "missing"),
                           "--runs-dir", str(tmp_path / "runs"), "--augment", "spin=3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "error:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("options, cut", [
    ([], "125"), (["--backbone", "VGG16"], "block5_conv1"),
    (["--backbone", "ResNet50"], str(round(BACKBONES["ResNet50"].depth * 2 / 3))),
    (["--backbone", "VGG16", "--fine-tune-at", "all"], "all"),
])
def test_train_fine_tunes_from_the_backbones_default_cut_as_the_pages_do(tmp_path, options, cut):
    config, _ = _run_config(make_parser().parse_args(["train", "--data", str(tmp_path), *options]))
    assert config.fine_tune.fine_tune_at == cut
    assert (config.fine_tune.optimizer, config.fine_tune.learning_rate) == ("adam", config.head.learning_rate / 10)


def test_a_config_without_fine_tuning_fine_tunes_when_asked_at_a_tenth_of_its_heads_rate(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(config_io.dumps(RunConfig(head=TrainConfig(optimizer="rmsprop", learning_rate=2e-3),
                                              fine_tune=None)))
    config, _ = _run_config(make_parser().parse_args(["train", "--config", str(path)]))
    assert config.fine_tune is None
    config, _ = _run_config(make_parser().parse_args(["train", "--config", str(path), "--fine-tune-epochs", "2"]))
    assert (config.fine_tune.optimizer, config.fine_tune.learning_rate, config.fine_tune.epochs) == ("rmsprop", 2e-4, 2)
    assert config.fine_tune.fine_tune_at == "125"
