"""`python -m core summary`: one JSON object on stdout; user errors exit 2 without a traceback."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


def test_summary_prints_the_tutorial_counts_as_json():
    result = run_cli("summary", "--backbone", "MobileNetV2", "--image-size", "160",
                     "--classes", "2", "--fine-tune-at", "100")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["total_params"] == 2_259_265
    assert summary["trainable_params"] == 1_862_721
    assert summary["non_trainable_params"] == 396_544
    assert summary["trainable_weight_tensors"] == 56
    layers = summary["layers"]
    assert layers[100]["part"] == "backbone" and layers[100]["trainable"]
    assert not layers[99]["trainable"]
    assert layers[-1]["name"] == "logits" and layers[-1]["params"] == 1_281


def test_summary_of_a_frozen_backbone():
    result = run_cli("summary", "--image-size", "160", "--classes", "2")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["trainable_params"], summary["trainable_weight_tensors"]) == (1_281, 2)


def test_user_error_exits_2_with_message_and_hint():
    result = run_cli("summary", "--backbone", "MobileNetV2", "--image-size", "150")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Image size 150" in result.stderr and "96, 128, 160, 192, 224" in result.stderr
    assert "Traceback" not in result.stderr
