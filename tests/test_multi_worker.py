"""Training across machines (TF_CONFIG, `tf.distribute.MultiWorkerMirroredStrategy`) is
refused: Keras 3's fit and evaluate fail under that strategy with two or more workers
(see `core.training.phases.refuse_multi_worker`). The CLI says so, with exit code 2 and
no traceback; a canary shows the Keras failure still holds, so the refusal can be lifted
when a Keras release fixes it."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.errors import UserError
from core.training import phases

ROOT = Path(__file__).resolve().parents[1]


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


def test_select_strategy_refuses_tf_config(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config([1, 2], 0))
    with pytest.raises(UserError, match="TF_CONFIG"):
        phases.select_strategy()
    monkeypatch.delenv("TF_CONFIG")
    assert phases.select_strategy() is not None  # the default strategy, unchanged


def test_cli_train_refuses_tf_config_without_a_traceback_or_a_run(colour_data_root, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "core", "train", "--data", str(colour_data_root / "colours"), "--weights", "none",
         "--image-size", "32", "--runs-dir", str(tmp_path / "runs")],
        cwd=ROOT, text=True, capture_output=True, timeout=300, check=False,
        env={**os.environ, "TF_CONFIG": tf_config(free_ports(2), 0)},
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: Training across machines (TF_CONFIG is set) is not supported" in done.stderr
    assert "hint: Unset TF_CONFIG" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


CANARY = textwrap.dedent("""
    import os, sys
    import numpy as np, tensorflow as tf, keras
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x = np.arange(32, dtype="float32").reshape(8, 4) / 32
    y = np.array([0, 1] * 4, dtype="int32")
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        try:
            model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), epochs=1, verbose=0)
        except ValueError as error:
            print("KERAS FAILS:", str(error).splitlines()[0][:120])
            sys.exit(0)
    print("KERAS TRAINS")
""")


def test_canary_keras_fit_still_fails_under_multi_worker_mirrored_strategy():
    """Two workers on loopback ports run a bare Keras `fit` of a one-layer model: it
    fails inside Keras. When this test fails, Keras trains under the strategy: lift
    `refuse_multi_worker` and test the CLI with two workers."""
    ports = free_ports(2)
    workers = [subprocess.Popen([sys.executable, "-c", CANARY], text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, "TF_CONFIG": tf_config(ports, index),
                                                            "TF_CPP_MIN_LOG_LEVEL": "2"})
               for index in range(2)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
        assert "KERAS FAILS: Attempt to convert a value (PerReplica" in stdout, (stdout, stderr[-2000:])
