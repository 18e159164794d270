"""Head training and fine-tuning: the fast path's equivalence, augmentation views,
BatchNormalization, stop, NaN, two learning rates and the distribution strategy.

Small data the tests make (the demo shapes at 96 px) and the real MobileNetV2
weights from ../shared, so the model is the real one.
"""
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
from core.data import datasets
from core.data.array_store import ArrayStore
from core.model.augmentation import build_augmentation
from core.model.build import build_model
from core.training import fast_path
from core.training import phases as training
from core.training.progress import Progress, Stopped

SIZE = 96


@pytest.fixture(scope="module")
def data():
    """A small subset of the demo shapes: 4 classes, 24 training images each."""
    full = datasets.load(DataConfig(image_size=SIZE, val_fraction=0.2, test_fraction=0.1))
    images, labels = full.splits["train"]
    keep = np.concatenate([np.flatnonzero(labels == c)[:24] for c in range(full.num_classes)])
    full.splits["train"] = (images[keep], labels[keep])
    return full


def new_model(data, augment=AugmentConfig(flip="horizontal", rotation=0.1), **model):
    keras.utils.set_random_seed(0)
    return build_model(ModelConfig(**model), data.num_classes, SIZE, build_augmentation(augment, seed=0))


def predict(model, inputs):
    return np.asarray(model.predict(keras.tree.map_structure(lambda x: x.astype("float32"), inputs), verbose=0))


def test_head_on_features_equals_the_full_model(data):
    model = new_model(data)
    result = training.train_phase(model, data, TrainConfig(epochs=2, views=2), "head", batch_size=16)
    assert result.path == "features" and len(result.history) == 2
    part = fast_path.frozen_part(model, model.freeze(None))
    images = data.splits["validation"][0]
    features = fast_path.extract(part, images, augment=False)
    np.testing.assert_allclose(predict(part.trainable, features[0]), predict(model.model, images), atol=2e-3)


def test_fine_tune_part_equals_the_full_model_across_residual_cut(data):
    model = new_model(data)
    cut = model.freeze("100")
    bottom, top = model.split_backbone(cut)
    assert len(bottom.outputs) == 2  # a residual connection jumps over layer 100 of MobileNetV2
    part = fast_path.frozen_part(model, cut)
    images = data.splits["validation"][0][:16]
    cached = fast_path.extract(part, images, augment=False)
    np.testing.assert_allclose(predict(part.trainable, tuple(cached)), predict(model.model, images), atol=2e-2)


def test_fine_tuning_reads_the_activations_head_training_stored(data, tmp_path):
    cache = ArrayStore(tmp_path)
    model = new_model(data)
    head_stages = Stages()
    head = training.train_phase(model, data, TrainConfig(epochs=1, views=2), "head", batch_size=16, fine_tune_cut=100,
                                cache=cache, progress=head_stages)
    assert "scoring the untrained head" in head_stages.seen  # said while the untrained head is evaluated
    assert sorted(head.cache["computed"]) == sorted(
        [f"{output} ({where})" for output in ("features", "cut100") for where in ("view 1", "view 2", "validation")])
    stages = Stages()
    tuned = training.train_phase(model, data, TrainConfig(epochs=1, fine_tune_at="100", views=2), "fine_tune",
                                 batch_size=16, progress=stages, cache=cache)
    assert tuned.path == "features" and len(tuned.history) == 1
    assert tuned.cache == {"read": ["cut100 (view 1)", "cut100 (view 2)", "cut100 (validation)"], "computed": []}
    assert "training" in stages.seen and not any("extracting" in stage for stage in stages.seen)
    assert "scoring the untrained head" not in stages.seen  # only the head phase scores its starting point
    stored = fast_path.cached_outputs(model, fast_path.frozen_part(model, 100), data, 1, 0, cache=cache).validation
    fresh = fast_path.extract(fast_path.frozen_part(model, 100), data.splits["validation"][0], augment=False)
    for a, b in zip(stored, fresh):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("split", ["features", "features and activations at 100", "activations at 100"])
def test_the_frozen_part_runs_with_its_weights_folded_into_its_graph(data, split):
    model = new_model(data)
    images = data.splits["validation"][0]
    pixels = images.astype("float32")
    bottom = model.split_backbone(100)[0]
    activations = keras.tree.flatten(bottom(model.preprocess(pixels), training=False))
    features = model.feature_extractor()(pixels, training=False)
    if split == "activations at 100":
        part, expected = fast_path.frozen_part(model, model.freeze("100")), activations
    else:
        depth = model.freeze(None)
        part = fast_path.frozen_part(model, depth, 100 if "activations" in split else None)
        expected = [features, *activations] if "activations" in split else [features]
    frozen = part.function(False, (SIZE, SIZE, 3))
    graph = frozen.graph.as_graph_def()
    ops = {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}
    assert not frozen.captured_inputs and not ops & {"ReadVariableOp", "VarHandleOp", "ResourceGather"}
    outputs = frozen(tf.constant(pixels))
    assert len(outputs) == len(expected)
    for output, keras_output in zip(outputs, expected):
        np.testing.assert_allclose(output.numpy(), keras_output.numpy(), atol=1e-3)
    assert part.function(False, (SIZE, SIZE, 3)) is frozen  # traced and folded once per part


def test_views_are_random_augmentations_and_validation_is_clean(data):
    model = new_model(data)
    part = fast_path.frozen_part(model, model.freeze(None))
    images = data.splits["train"][0][:8]
    first, second = (fast_path.extract(part, images, augment=True)[0] for _ in range(2))
    clean = [fast_path.extract(part, images, augment=False)[0] for _ in range(2)]
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(clean[0], clean[1])


def test_each_epoch_reads_the_next_view_in_a_new_order():
    views = [[np.stack([np.full(2, 10 * v + row, "float16") for row in range(5)])] for v in range(3)]
    weights = np.linspace(0.5, 2.5, 5).astype("float32")
    batches = list(fast_path.view_batches(views, np.arange(5), batch_size=2, seed=0, epochs=4, sample_weights=weights))
    steps = fast_path.steps_per_epoch(5, 2)
    assert len(batches) == 4 * steps == 12
    epochs = [batches[e * steps:(e + 1) * steps] for e in range(4)]
    for epoch, epoch_batches in enumerate(epochs):
        values = np.concatenate([inputs.numpy()[:, 0] for inputs, _, _ in epoch_batches])
        rows = np.concatenate([labels.numpy() for _, labels, _ in epoch_batches])
        assert sorted(rows) == list(range(5))  # every image once per epoch
        np.testing.assert_array_equal(values, 10 * (epoch % 3) + rows)  # from view epoch mod 3, rows matched
        np.testing.assert_allclose(np.concatenate([w.numpy() for _, _, w in epoch_batches]), weights[rows])
        assert epoch_batches[0][0].dtype == "float32"
    orders = [tuple(np.concatenate([labels.numpy() for _, labels, _ in e])) for e in epochs]
    assert len(set(orders)) > 1  # reshuffled between epochs


def test_fine_tuning_on_the_fast_path_keeps_batchnorm_statistics(data):
    model = new_model(data)
    backbone = model.backbone
    norms = [layer for layer in backbone.layers[100:] if isinstance(layer, keras.layers.BatchNormalization)]
    before = [np.array(layer.moving_mean) for layer in norms]
    kernel = next(layer for layer in backbone.layers[100:] if layer.trainable_weights or isinstance(layer, keras.layers.Conv2D))
    kernel_before = np.array(kernel.weights[0])
    result = training.train_phase(model, data, TrainConfig(epochs=1, learning_rate=1e-3, fine_tune_at="100", views=1),
                                  "fine_tune", batch_size=16)
    assert result.path == "features"
    for layer, mean in zip(norms, before):
        np.testing.assert_array_equal(np.array(layer.moving_mean), mean)
    assert not np.array_equal(np.array(kernel.weights[0]), kernel_before)  # the top really trained


def test_fine_tuning_continues_epoch_numbers_and_can_take_the_full_path(data):
    model = new_model(data)
    training.train_phase(model, data, TrainConfig(epochs=1), "head", batch_size=16)
    result = training.train_phase(model, data, TrainConfig(epochs=1, fine_tune_at="140", fast_path=False),
                                  "fine_tune", batch_size=16, epoch_offset=1)
    assert result.path == "full"
    assert [r["epoch"] for r in result.history] == [2] and result.history[0]["phase"] == "fine_tune"


def test_head_learns_the_shapes(data):
    model = new_model(data)
    result = training.train_phase(model, data, TrainConfig(epochs=6, views=2), "head", batch_size=16)
    assert result.initial["accuracy"] < 0.6  # the tutorial's starting point: an untrained head
    assert result.best_val_accuracy > 0.8


class Stages(Progress):
    """Remembers every stage reported."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def update(self, **fields):
        super().update(**fields)
        if "stage" in fields:
            self.seen.add(fields["stage"])


class StopAt(Progress):
    """Asks to stop once `batches` training batches have run."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def update(self, **fields):
        super().update(**fields)
        if fields.get("stage") == "training" and fields.get("batch", 0) >= self.batches:
            self.request_stop()


def test_stop_ends_after_the_current_batch(data):
    model = new_model(data)
    result = training.train_phase(model, data, TrainConfig(epochs=5, views=1), "head", batch_size=16,
                                  progress=StopAt(batches=2))
    assert result.stopped and len(result.history) == 1  # the first epoch ended early, no second one


def test_stop_during_feature_extraction(data, tmp_path):
    progress = Progress()
    progress.request_stop()
    with pytest.raises(Stopped):
        training.train_phase(new_model(data), data, TrainConfig(epochs=1), "head", progress=progress,
                             cache=ArrayStore(tmp_path))
    assert ArrayStore(tmp_path).entries() == []  # nothing half-written is kept


def test_nan_loss_is_detected(data):
    model = new_model(data)
    result = training.train_phase(model, data, TrainConfig(epochs=3, optimizer="sgd", learning_rate=1e38, views=1),
                                  "head", batch_size=16)
    assert result.nan_epoch == 1 and result.history == []


def test_separate_head_learning_rate(data):
    model = new_model(data)
    logits = model.head[-1]
    top_conv = model.backbone.get_layer("Conv_1")
    head_before, conv_before = np.array(logits.kernel), np.array(top_conv.kernel)
    config = TrainConfig(epochs=1, learning_rate=1e-3, head_learning_rate=0.0, fine_tune_at="140", views=1)
    training.train_phase(model, data, config, "fine_tune", batch_size=16)
    np.testing.assert_array_equal(np.array(logits.kernel), head_before)  # head rate 0: unchanged
    assert not np.array_equal(np.array(top_conv.kernel), conv_before)


def test_class_weights_balance_the_classes():
    weights = training.class_weights(np.array([0, 0, 0, 1]), 2)
    np.testing.assert_allclose(weights, [4 / 6, 2.0])


def test_training_on_two_logical_cpu_devices(tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import numpy as np
        from core.data import datasets
        from core.training import phases as training
        from core.config import DataConfig, ModelConfig, TrainConfig
        from core.model.build import build_model
        strategy = training.select_strategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2, strategy
        data = datasets.load(DataConfig(image_size={SIZE}))
        for split in data.splits:
            images, labels = data.splits[split]
            data.splits[split] = (images[:64], labels[:64])
        from core.model import backbones
        kept = backbones.load_backbone("MobileNetV2", {SIZE})
        backbones.reuse(kept, "MobileNetV2", {SIZE})
        with strategy.scope():
            model = build_model(ModelConfig(), data.num_classes, {SIZE})
            assert model.backbone is not kept  # a backbone made outside the strategy is not taken in it
            fast = training.train_phase(model, data, TrainConfig(epochs=2, views=1), "head", batch_size=16)
            full = training.train_phase(model, data, TrainConfig(epochs=3, fast_path=False, fine_tune_at="140"),
                                        "fine_tune", batch_size=16, epoch_offset=2)
        backbones.reuse(model.backbone, "MobileNetV2", {SIZE})  # mirrored variables: not kept
        assert backbones.load_backbone("MobileNetV2", {SIZE}) is kept
        print("PATHS", fast.path, full.path, "LOSS", full.history[0]["loss"], full.history[-1]["loss"])
        assert full.history[-1]["loss"] < fast.history[0]["loss"]
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PATHS features full" in done.stdout
