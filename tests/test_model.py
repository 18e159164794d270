"""Model building, freezing and unfreezing, compile settings and the counts the UI shows.

The reference numbers come from the TensorFlow transfer-learning tutorial
(MobileNetV2), the Keras guide (Xception) and Chollet's book (VGG16).
"""
import keras
import numpy as np
import pytest

from core.config import ModelConfig, RunConfig
from core.errors import UserError
from core.model.backbones import BACKBONES
from core.model.build import build_model, compile_model, count_params, layer_table, summary_text
from core.model.classifier import Classifier
from core.model.trainable_api import trainable_api_demo
from core.workflow import _fine_tune_cut

SMALL = ModelConfig(backbone="MobileNet", weights="imagenet")  # alpha 0.25, cached weights


@pytest.fixture(scope="module")
def mobilenet_v2():
    """The tutorial's model: MobileNetV2 at 160 px with ImageNet weights, 2 classes."""
    return build_model(ModelConfig(), num_classes=2, image_size=160)


@pytest.fixture(scope="module")
def xception():
    """The Keras guide's model: Xception at 150 px with a Dense(1) head."""
    return build_model(ModelConfig(backbone="Xception", weights="none"), 2, 150)


@pytest.fixture(scope="module")
def vgg16():
    """The book's model: VGG16 at 150 px, Flatten -> Dense(256) -> Dense(1)."""
    config = ModelConfig(backbone="VGG16", weights="none", pooling="flatten", hidden_units=256)
    return build_model(config, 2, 150)


def random_pixels(count: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype("float32")


@pytest.mark.parametrize("name, fixture, layer", [("MobileNetV2", "mobilenet_v2", "block_14_expand"),
                                                  ("VGG16", "vgg16", "block5_conv1"), ("Xception", "xception", None)])
def test_each_backbone_fine_tunes_by_default_from_its_references_cut_or_two_thirds_of_its_depth(name, fixture, layer,
                                                                                                  request):
    classifier, spec = request.getfixturevalue(fixture), BACKBONES[name]
    assert spec.depth == classifier.depth
    cut = classifier.cut_at(spec.fine_tune_at)
    assert 0 < cut < classifier.depth
    if layer is None:
        assert cut == round(classifier.depth * 2 / 3)
    else:
        assert classifier.backbone.layers[cut].name == layer


def test_a_head_only_run_stores_activations_at_its_backbones_default_cut(xception):
    """So the Fine-tune page's default fine-tuning reads them (it starts at the same cut)."""
    head_only = RunConfig(model=ModelConfig(backbone="Xception", weights="none"), fine_tune=None)
    assert _fine_tune_cut(xception, head_only) == xception.cut_at(BACKBONES["Xception"].fine_tune_at)


def test_frozen_mobilenet_v2_counts_match_the_tutorial(mobilenet_v2):
    assert mobilenet_v2.freeze(None) == len(mobilenet_v2.backbone.layers)
    assert count_params(mobilenet_v2.model) == {
        "total_params": 2_259_265,
        "trainable_params": 1_281,
        "non_trainable_params": 2_257_984,
        "trainable_weight_tensors": 2,
    }


def test_unfreezing_mobilenet_v2_from_layer_100_matches_the_tutorial(mobilenet_v2):
    assert mobilenet_v2.freeze("100") == 100
    counts = count_params(mobilenet_v2.model)
    assert counts["trainable_params"] == 1_862_721
    assert counts["non_trainable_params"] == 396_544
    assert counts["trainable_weight_tensors"] == 56
    mobilenet_v2.freeze(None)
    assert count_params(mobilenet_v2.model)["trainable_params"] == 1_281


def test_xception_counts_match_the_keras_guide(xception):
    xception.freeze(None)
    frozen = count_params(xception.model)
    assert (frozen["total_params"], frozen["trainable_params"]) == (20_863_529, 2_049)
    xception.freeze("all")
    unfrozen = count_params(xception.model)
    assert (unfrozen["trainable_params"], unfrozen["non_trainable_params"]) == (20_809_001, 54_528)


def test_vgg16_trainable_tensors_match_the_book(vgg16):
    vgg16.freeze("all")
    assert count_params(vgg16.model)["trainable_weight_tensors"] == 30
    vgg16.freeze(None)
    assert count_params(vgg16.model)["trainable_weight_tensors"] == 4
    cut = vgg16.freeze("block5_conv1")
    assert vgg16.backbone.layers[cut].name == "block5_conv1"
    assert count_params(vgg16.model)["trainable_weight_tensors"] == 10


def test_unknown_layer_name_suggests_valid_names(vgg16):
    with pytest.raises(UserError) as caught:
        vgg16.freeze("block5_conv9")
    assert "block5_conv1" in caught.value.hint


def test_layer_index_past_the_backbone_is_refused(vgg16):
    with pytest.raises(UserError, match="past the end"):
        vgg16.freeze("999")


def test_model_layers_have_stable_names_in_pipeline_order():
    augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal")], name="augmentation")
    model = build_model(SMALL, 2, 128, augmentation=augmentation)
    assert [layer.name for layer in model.model.layers] == [
        "pixels", "augmentation", "preprocess", "backbone", "pooling", "dropout", "logits",
    ]
    assert [layer.name for layer in (model.pooling, *model.head)] == ["pooling", "dropout", "logits"]
    assert model.augmentation is augmentation
    assert not model.backbone.trainable


def test_parts_are_found_again_in_a_saved_model(tmp_path):
    built = build_model(ModelConfig(backbone="MobileNet", weights="none", hidden_units=4), 3, 96,
                        keras.Sequential([keras.layers.RandomFlip("horizontal")], name="augmentation"))
    built.model.save(tmp_path / "model.keras")
    loaded = Classifier.from_keras(keras.models.load_model(tmp_path / "model.keras", safe_mode=True))
    assert [layer.name for layer in loaded.head] == ["hidden", "dropout", "logits"]
    assert loaded.augmentation is not None and loaded.wrapper.enabled is False
    assert (loaded.depth, loaded.head[-1].units) == (built.depth, 3)
    assert loaded.cut_at("conv_pw_13") == built.cut_at("conv_pw_13") == built.depth - 3
    found = Classifier.from_keras(built.model)
    assert found.backbone is built.backbone and found.head == built.head and found.pooling is built.pooling


def test_a_model_this_app_did_not_build_is_a_user_error():
    inputs = keras.Input((4,))
    with pytest.raises(UserError, match="not built by this app"):
        Classifier.from_keras(keras.Model(inputs, keras.layers.Dense(1)(inputs)))


def test_logits_are_one_for_two_classes_and_n_for_n():
    assert build_model(SMALL, 2, 128).head[-1].units == 1
    assert build_model(SMALL, 5, 128).head[-1].units == 5


def test_model_takes_raw_pixels_and_preprocesses_inside():
    model = build_model(SMALL, 2, 128)
    features = keras.Model(model.model.inputs, model.pooling.input)
    pixels = random_pixels(2, 128)
    expected = model.backbone(BACKBONES["MobileNet"].preprocess_input(pixels.copy()))
    np.testing.assert_allclose(features.predict(pixels, verbose=0), expected, atol=1e-4)


def test_invalid_head_settings_are_user_errors():
    with pytest.raises(UserError, match="pooling"):
        build_model(ModelConfig(backbone="MobileNet", pooling="max"), 2, 128)
    with pytest.raises(UserError, match="at least 2 classes"):
        build_model(SMALL, 1, 128)


def batchnorm_statistics(model: Classifier) -> list[np.ndarray]:
    return [
        weight.numpy()
        for layer in model.backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for weight in (layer.moving_mean, layer.moving_variance)
    ]


@pytest.mark.parametrize("fine_tune_at", [None, "all"])
def test_training_step_keeps_batchnorm_statistics(fine_tune_at):
    model = build_model(SMALL, 2, 128)
    model.freeze(fine_tune_at)
    compile_model(model.model, learning_rate=1e-2)
    before = batchnorm_statistics(model)
    kernel_before = model.backbone.get_layer("conv1").kernel.numpy()
    logits_before = model.head[-1].kernel.numpy()
    model.model.fit(random_pixels(4, 128), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    for statistic, initial in zip(batchnorm_statistics(model), before):
        np.testing.assert_array_equal(statistic, initial)
    assert not np.allclose(model.head[-1].kernel.numpy(), logits_before)
    kernel_changed = not np.allclose(model.backbone.get_layer("conv1").kernel.numpy(),
                                     kernel_before)
    assert kernel_changed == (fine_tune_at == "all")


def test_freeze_batchnorm_keeps_batchnorm_layers_frozen():
    model = build_model(SMALL, 2, 128)
    model.freeze("all", freeze_batchnorm=True)
    backbone = model.backbone
    batchnorms = [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert batchnorms and not any(layer.trainable for layer in batchnorms)
    assert backbone.get_layer("conv1").trainable
    assert count_params(model.model)["non_trainable_params"] == sum(l.count_params() for l in batchnorms)


def test_layer_table_lists_backbone_then_head(mobilenet_v2):
    mobilenet_v2.freeze("100")
    rows = layer_table(mobilenet_v2)
    backbone_rows = [row for row in rows if row["part"] == "backbone"]
    assert len(backbone_rows) == len(mobilenet_v2.backbone.layers)
    assert [row["index"] for row in rows] == list(range(len(rows)))
    assert [row["trainable"] for row in backbone_rows] == [
        index >= 100 for index in range(len(backbone_rows))
    ]
    assert [row["name"] for row in rows[len(backbone_rows):]] == ["pooling", "dropout", "logits"]
    assert rows[-1] == {
        "index": len(rows) - 1, "name": "logits", "type": "Dense", "output_shape": "(None, 1)",
        "params": 1_281, "trainable": True, "part": "head",
    }
    assert sum(row["params"] for row in rows) == count_params(mobilenet_v2.model)["total_params"]
    mobilenet_v2.freeze(None)


def test_summary_text_reports_the_model(mobilenet_v2):
    mobilenet_v2.freeze(None)
    text = summary_text(mobilenet_v2)
    assert "backbone" in text and "2,259,265" in text and "Trainable params: 1,281" in text
    assert "Conv1" in summary_text(mobilenet_v2, expand_nested=True)


def tiny_logits_model(units: int) -> keras.Model:
    """Inputs pass through unchanged as logits."""
    inputs = keras.Input((units,))
    logits = keras.layers.Dense(units, kernel_initializer="identity", name="logits")(inputs)
    return keras.Model(inputs, logits)


def test_binary_compile_uses_logits_and_threshold_zero():
    model = compile_model(tiny_logits_model(1))
    logits = np.array([[-0.3], [0.3]], dtype="float32")
    loss, accuracy = model.evaluate(logits, np.array([0, 1]), verbose=0)
    assert accuracy == 1.0  # a 0.5 threshold on logits would call 0.3 class 0
    assert loss == pytest.approx(np.log1p(np.exp(-0.3)), rel=1e-4)


def test_multiclass_compile_uses_sparse_categorical_from_logits():
    model = compile_model(tiny_logits_model(3), optimizer="sgd")
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype="float32")
    labels = np.array([0, 2])
    loss, accuracy = model.evaluate(logits, labels, verbose=0)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert accuracy == 1.0
    assert loss == pytest.approx(-log_softmax[[0, 1], labels].mean(), rel=1e-4)
    assert isinstance(model.optimizer, keras.optimizers.SGD) and model.optimizer.momentum == 0.9


def test_unknown_optimizer_is_a_user_error():
    with pytest.raises(UserError, match="adagrad"):
        compile_model(tiny_logits_model(1), optimizer="adagrad")


def test_model_saves_and_loads_in_safe_mode(tmp_path):
    model = build_model(SMALL, 3, 128).model
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path, safe_mode=True)
    pixels = random_pixels(2, 128)
    np.testing.assert_allclose(
        restored.predict(pixels, verbose=0), model.predict(pixels, verbose=0), atol=1e-5
    )
    assert isinstance(Classifier.from_keras(restored).backbone, keras.Model)


def test_trainable_api_demo_measures_the_guide_results():
    results = {entry["title"]: entry for entry in trainable_api_demo()}
    measured = [entry["measured"] for entry in results.values()]
    dense, batchnorm, frozen_dense, frozen_fit, recursive = measured
    assert dense == {"weights": 2, "trainable_weights": 2, "non_trainable_weights": 0}
    assert batchnorm == {"weights": 4, "trainable_weights": 2, "non_trainable_weights": 2}
    assert frozen_dense == {"weights": 2, "trainable_weights": 0, "non_trainable_weights": 2}
    assert frozen_fit["layer1_max_change"] == 0.0 and frozen_fit["layer2_max_change"] > 0.0
    assert recursive["inner_model_trainable"] is False
    assert recursive["inner_layer_trainable"] is False
    assert recursive["trainable_weights"] == 0
    assert all("keras.layers" in entry["code"] for entry in results.values())
