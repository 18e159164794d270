"""Training across machines: with TF_CONFIG naming two or more machines, `python -m core train`
trains on all of them under `tf.distribute.MultiWorkerMirroredStrategy`
(`core.training.distributed`); the chief writes the run, the others nothing. Two worker
processes on loopback ports stand for two machines."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from core.data import datasets
from core.errors import UserError
from core.model import build  # noqa: F401  registers the model's own layers for plain load_model
from core.training import runs
from core.training.distributed import Task, cluster_task

ROOT = Path(__file__).resolve().parents[1]
# MobileNet alpha 0.25 with its real ImageNet weights (2 MB, linked by conftest.py), batches of 8
# images: 4 per machine.
MODEL = ["--weights", "imagenet", "--backbone", "MobileNet", "--image-size", "128", "--augment", "none",
         "--seed", "3", "--batch-size", "8"]
TRAIN = [*MODEL, "--head-epochs", "3", "--fine-tune-epochs", "1", "--fine-tune-at", "70"]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


@pytest.mark.parametrize("text, expected", [
    (None, None),
    ("", None),
    (tf_config([1], 0), None),  # one machine: the normal path
    (tf_config([1, 2], 1), Task("worker", 1, 2)),
    (json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]}, "task": {"type": "worker", "index": 0}}),
     Task("worker", 0, 3)),
])
def test_cluster_task_reads_tf_config(monkeypatch, text, expected):
    if text is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", text)
    assert cluster_task() == expected


def test_the_chief_is_the_chief_task_else_worker_0():
    assert Task("worker", 0, 2).is_chief and not Task("worker", 1, 2).is_chief
    assert Task("chief", 0, 3).is_chief


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:1"], "evaluator": ["c:1"]}, "task": {"type": "worker", "index": 0}}),
     "evaluator"),
    (json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}), "index 2"),
])
def test_a_wrong_tf_config_is_a_user_error(monkeypatch, text, message):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(UserError, match=message) as caught:
        cluster_task()
    assert "TF_CONFIG" in caught.value.message + caught.value.hint


def cli(args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core", "train", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env})


def result_of(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-4000:]
    assert "Traceback" not in stderr
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.integration
def test_two_machines_train_one_run_as_good_as_one_machine(colour_data_root, tmp_path):
    data = str(colour_data_root / "colours")
    ports = free_ports(2)
    machines = [cli(["--data", data, *TRAIN, "--runs-dir", str(tmp_path / f"runs-{i}")],
                    TF_CONFIG=tf_config(ports, i), TL_RUNS_DIR=str(tmp_path / f"runs-{i}"),
                    TL_CACHE_DIR=str(tmp_path / f"cache-{i}"))
                for i in range(2)]
    chief, other = (result_of(process) for process in machines)
    # The same command on one machine, with a one-machine TF_CONFIG: the normal path (a worker process).
    alone = result_of(cli(["--data", data, *TRAIN, "--runs-dir", str(tmp_path / "alone")],
                          TF_CONFIG=tf_config(free_ports(1), 0)))

    assert chief["task"] == "worker 0 of 2 machines" and other["task"] == "worker 1 of 2 machines"
    assert "task" not in alone and alone["status"] == chief["status"] == other["status"] == "finished"
    assert not (tmp_path / "runs-1").exists() or not any((tmp_path / "runs-1").iterdir())  # the other wrote no run
    assert other["run_dir"] is None

    run = runs.Run(chief["run_dir"])
    assert run.path.parent == tmp_path / "runs-0" and runs.list_runs(tmp_path / "runs-0") == [run]
    assert run.status()["status"] == runs.FINISHED and run.status()["machines"] == 2
    history = run.history()
    assert [(r["phase"], r["epoch"], r["path"]) for r in history] == (
        [("head", e, "full") for e in (1, 2, 3)] + [("fine_tune", 4, "full")])
    assert history[0]["learning_rate"] == pytest.approx(1e-3) and history[-1]["learning_rate"] == pytest.approx(1e-4)
    metrics = run.read_json("metrics.json")
    assert set(metrics) >= {"head", "fine_tune", "initial"} and "test_accuracy" in metrics["fine_tune"]
    assert run.progress()["stage"] == "ended"

    # The chief's final model loads with plain Keras and scores on validation what the run recorded.
    model = keras.saving.load_model(run.model_path("final"))
    images, labels = datasets.load(run.config.data, root=Path("/")).splits["validation"]
    predicted = np.argmax(model.predict(images.astype("float32"), verbose=0), axis=-1)
    accuracy = float(np.mean(predicted == labels))
    assert accuracy == pytest.approx(chief["val_accuracy"])
    # Three colours: chance is 1/3. Two machines reach what one machine reaches.
    assert chief["val_accuracy"] >= 0.8 and other["val_accuracy"] >= 0.8
    assert alone["val_accuracy"] >= 0.8
    assert abs(chief["val_accuracy"] - alone["val_accuracy"]) <= 0.2


@pytest.mark.integration
def test_a_stop_asked_in_the_chiefs_run_folder_stops_every_machine_after_the_same_batch(colour_data_root, tmp_path):
    """The dashboard's Stop (or `Run.request_stop`) on the chief's run: both machines leave
    the loop together (neither waits forever for the other), the run is stopped with the
    epochs done so far, and fine-tuning does not start."""
    ports = free_ports(2)
    args = ["--data", str(colour_data_root / "colours"), *MODEL, "--head-epochs", "500",
            "--fine-tune-epochs", "1", "--fine-tune-at", "70"]
    machines = [cli([*args, "--runs-dir", str(tmp_path / f"runs-{i}")], TF_CONFIG=tf_config(ports, i),
                    TL_CACHE_DIR=str(tmp_path / f"cache-{i}"))
                for i in range(2)]
    deadline = time.monotonic() + 240
    while not (found := runs.list_runs(tmp_path / "runs-0")) or not found[0].history():
        assert time.monotonic() < deadline and all(m.poll() is None for m in machines), "no epoch ended"
        time.sleep(0.2)
    found[0].request_stop()
    chief, other = (result_of(process) for process in machines)
    assert chief["status"] == other["status"] == "stopped"
    run = runs.Run(chief["run_dir"])
    epochs = [record["epoch"] for record in run.history()]
    assert 1 <= len(epochs) < 500 and {r["phase"] for r in run.history()} == {"head"}
    assert run.model_path("final").is_file()  # the epochs before the stop are kept


@pytest.mark.parametrize("command", ["sweep", "lr-find"])
def test_commands_other_than_train_refuse_a_cluster_before_making_a_run(monkeypatch, capsys, tmp_path, command):
    from core.__main__ import USER_ERROR_EXIT, main

    monkeypatch.setenv("TF_CONFIG", tf_config([1, 2], 0))
    assert main([command, "--data", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]) == USER_ERROR_EXIT
    assert "error: Only `train` runs across machines" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
