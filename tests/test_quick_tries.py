"""Quick tries: the learning-rate finder and the sweep over head settings, on cached features.

The finder on synthetic problems whose good rate is known; the sweep and the
finder jobs end to end on the demo shapes with the real MobileNet alpha 0.25
weights from ../shared; the CLI's `sweep` command.
"""
import json

import keras
import numpy as np
import pytest

from core import workflow
from core.__main__ import main
from core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from core.errors import UserError
from core.model import backbones
from core.model.build import add_head, compile_model
from core.model.tunable_head import TunableDropout
from core.training import lr_finder, runs, sweep
from core.training.progress import Progress


def test_suggest_picks_the_steepest_fall_of_a_known_curve():
    rates = np.logspace(-7, 1, 200)
    losses = 1.0 - np.tanh(2.0 * (np.log10(rates) + 3.0))  # falls fastest at 1e-3
    assert lr_finder.suggest(rates, losses) == pytest.approx(1e-3, rel=0.15)


def linear_problem(seed=0, n=512, dim=16, classes=3):
    """Overlapping Gaussian blobs at a large feature scale: a linear head learns them at
    moderate rates and oscillates or diverges at high ones (as cached features would)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (classes, dim))
    labels = rng.integers(0, classes, n).astype("int32")
    features = (5.0 * (centres[labels] + rng.normal(0, 1.0, (n, dim)))).astype("float16")
    return [[features]], labels


def fresh_head(dim=16, classes=3):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((dim,))
    return keras.Model(inputs, add_head(inputs, ModelConfig(dropout=0.0), classes))


def loss_after(rate, views, labels, epochs=2):
    """Ground truth, without the finder: the loss of a fresh head after `epochs` of SGD at a fixed `rate`."""
    model = compile_model(fresh_head(), "sgd", float(rate), 3)
    features = views[0][0].astype("float32")
    model.fit(features, labels, batch_size=32, epochs=epochs, shuffle=True, verbose=0)
    loss = float(model.evaluate(features, labels, verbose=0)[0])
    return loss if np.isfinite(loss) else np.inf


def test_the_suggestion_lies_where_the_loss_falls_fastest_on_a_synthetic_problem():
    views, labels = linear_problem()
    result = lr_finder.find_learning_rate(fresh_head(), views, labels, 3, "sgd", start=1e-7, end=10.0, steps=200)
    rates, losses = np.asarray(result.rates), np.asarray(result.losses)
    assert np.all(np.diff(rates) > 0)
    assert result.suggestion < rates[np.argmin(losses)]  # on the falling part, before the minimum
    # Ground truth on a grid of fixed rates: the best one, and the suggestion near it.
    grid = 10.0 ** np.arange(-6, 1)
    trained = np.array([loss_after(rate, views, labels) for rate in grid])
    best = grid[np.argmin(trained)]
    assert best / 30 <= result.suggestion <= best * 3, (result.suggestion, dict(zip(grid, trained)))
    initial = loss_after(1e-12, views, labels)
    assert loss_after(result.suggestion, views, labels) < 0.5 * initial
    assert loss_after(result.suggestion * 1000, views, labels) > loss_after(result.suggestion, views, labels)


def split_problem(classes, validation=96):
    """`linear_problem` split into training views and labels, then validation views and labels."""
    views, labels = linear_problem(n=512 + validation, classes=classes)
    features = views[0][0]
    return [[features[:512]]], labels[:512], [[features[512:]]], labels[512:]


@pytest.mark.parametrize("classes", [2, 3])
def test_a_trial_scores_every_epoch_as_keras_validation_does(classes):
    views, labels, val_views, val_labels = split_problem(classes)
    model = compile_model(fresh_head(classes=classes), "adam", 1e-2, classes)
    scores = sweep._TrialScores(val_views[0][0], val_labels)
    history = model.fit(views[0][0].astype("float32"), labels, batch_size=32, epochs=3, verbose=0, callbacks=[scores],
                        validation_data=(val_views[0][0].astype("float32"), val_labels)).history
    assert scores.accuracies == pytest.approx(history["val_accuracy"], abs=1e-6)
    assert scores.losses == pytest.approx(history["val_loss"], rel=1e-4)
    assert scores.accuracies[-1] > 1.5 / classes  # it learned: there is something to compare


def test_a_trial_returns_its_best_epoch():
    views, labels, val_views, val_labels = split_problem(2)
    params = {"learning_rate": 1e-2, "dropout": 0.1, "hidden_units": 0, "epochs": 4, "optimizer": "adam",
              "class_weights": True}
    scores = sweep.train_trial(params, views, labels, val_views[0], val_labels, 2)
    assert 1 <= scores["epoch"] <= 4 and scores["val_accuracy"] > 0.6 and np.isfinite(scores["val_loss"])


def test_a_trial_scores_the_same_on_a_shared_head_as_on_a_new_one():
    views, labels, val_views, val_labels = split_problem(2)
    first = {"learning_rate": 1e-2, "dropout": 0.3, "hidden_units": 64, "epochs": 3, "optimizer": "adam",
             "class_weights": False}
    other = {**first, "learning_rate": 3e-2, "dropout": 0.1, "epochs": 4, "class_weights": True}
    heads = sweep.TrialHeads((16,), 2, steps=16)

    def scores(params, shared=None):
        return {k: v for k, v in sweep.train_trial(params, views, labels, val_views[0], val_labels, 2,
                                                   heads=shared).items() if k != "seconds"}

    alone = scores(first)
    assert scores(first, heads) == alone
    assert scores(other, heads) != alone  # it trained the shared head (and its optimizer) on
    assert scores(first, heads) == alone  # which was reset: initial weights, optimizer state, dropout stream
    assert len(heads._built) == 1


def test_the_sweep_dropout_drops_at_its_rate_and_keeps_the_expected_value():
    layer = TunableDropout(seed=0)
    inputs = keras.ops.ones((400, 50))
    layer.build(inputs.shape)
    for rate in (0.0, 0.25, 0.5):
        layer.rate.assign(rate)
        out = keras.ops.convert_to_numpy(layer(inputs, training=True))
        assert np.mean(out == 0) == pytest.approx(rate, abs=0.02)
        np.testing.assert_allclose(out[out != 0], 1 / (1 - rate), rtol=1e-6)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(inputs, training=False)), 1.0)


SIZE = 128


def base_config(**changes) -> RunConfig:
    config = RunConfig(data=DataConfig(image_size=SIZE, val_fraction=0.2, test_fraction=0.1),
                       model=ModelConfig(backbone="MobileNet"), head=TrainConfig(epochs=2, views=1),
                       fine_tune=TrainConfig(epochs=1, learning_rate=1e-4, fine_tune_at="70", views=1))
    return RunConfig(**{**vars(config), **changes})


def test_the_sweep_trains_its_best_trial_as_a_run_that_loads_and_fine_tunes(tmp_path):
    sweep_run = runs.Run.create(tmp_path, base_config())
    progress = Progress()
    record = workflow.sweep_job(sweep_run, progress, trials=3)
    assert [row["trial"] for row in record["trials"]] == [1, 2, 3]
    assert json.loads((sweep_run.path / workflow.SWEEP_FILE).read_text())["best_run"] == record["best_run"]
    assert record["best"]["val_accuracy"] == max(row["val_accuracy"] for row in record["trials"])
    assert progress.snapshot().trials == record["trials"]  # the live table

    best = runs.Run(tmp_path / record["best_run"])
    assert best.status()["status"] == runs.FINISHED
    assert best.config.head.learning_rate == pytest.approx(record["best"]["learning_rate"])
    assert best.config.model.hidden_units == record["best"]["hidden_units"]
    head = best.read_json("metrics.json")["head"]
    assert head["feature_cache"]["computed"] == 0  # the sweep's features
    # the run is the trial: its scores, epoch by epoch, and its best epoch kept
    history = [r for r in best.history() if r["phase"] == "head"]
    assert len(history) == record["best"]["epochs"] and head["val_accuracy"] == record["best"]["val_accuracy"]
    kept = max(history, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert kept["epoch"] == record["best"]["epoch"] and kept["val_loss"] == pytest.approx(record["best"]["val_loss"])
    assert list((best.path / "tensorboard").rglob("events.out.tfevents.*"))
    model, _ = workflow.load_run_model(best, "head")
    assert model.get_layer("dropout").rate == pytest.approx(record["best"]["dropout"])
    metrics = workflow.fine_tune_job(best, Progress())
    assert metrics["fine_tune"]["epochs"] == 1 and metrics["fine_tune"]["feature_cache"]["computed"] == 0


def test_a_second_head_run_in_one_process_reuses_the_backbone_and_trains_the_same_head(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "_PREBUILT", {})  # nothing kept by earlier tests
    loads = []
    load = backbones._load_imagenet
    monkeypatch.setattr(backbones, "_load_imagenet", lambda *args: loads.append(args) or load(*args))
    first, second = (runs.Run.create(tmp_path, base_config()) for _ in range(2))
    workflow.head_job(first, Progress())
    workflow.head_job(second, Progress())
    assert len(loads) == 1  # the second run took the first's backbone
    heads = [workflow.load_run_model(run, "head")[0] for run in (first, second)]
    for a, b in zip(*(model.weights for model in heads)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), err_msg=a.path)
    assert workflow.fine_tune_job(second, Progress())["fine_tune"]["epochs"] == 1

def test_the_lr_finder_job_on_the_head_and_on_fine_tuning(tmp_path):
    run = runs.Run.create(tmp_path, base_config())
    found = workflow.lr_find_job(run, Progress())
    head = found["head"]
    assert len(head["rates"]) == len(head["losses"]) > 20 and head["rates"][0] < head["suggestion"] < head["rates"][-1]
    with pytest.raises(UserError, match="no trained head"):
        workflow.lr_find_job(run, Progress(), phase="fine_tune")
    workflow.head_job(run, Progress())
    found = workflow.lr_find_job(run, Progress(), phase="fine_tune")
    assert set(found) == {"head", "fine_tune"} and found["fine_tune"]["suggestion"] > 0


def test_the_sweep_command_prints_json(tmp_path, capsys, colour_data_root):
    code = main(["sweep", "--data", str(colour_data_root / "colours"), "--trials", "2", "--backbone", "MobileNet",
                 "--image-size", "128", "--head-epochs", "1", "--fine-tune-epochs", "0", "--runs-dir", str(tmp_path)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["trials"]) == 2 and printed["best"]["trial"] in (1, 2)
    assert runs.Run(printed["best_run_dir"]).model_path("head").is_file()
