"""Backbone registry, preprocessing layer and weights loading."""
import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest
from keras.src.utils import file_utils

from core import settings
from core.errors import UserError
from core.model.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    Preprocess,
    WeightsUnavailableError,
    load_backbone,
    prebuild,
    reuse,
)
from core.model.build import build_model

REQUIRED = {
    "MobileNetV2", "MobileNet", "MobileNetV3Small", "MobileNetV3Large", "EfficientNetB0",
    "ResNet50", "ResNet50V2", "Xception", "InceptionV3", "DenseNet121", "VGG16", "ConvNeXtTiny",
}
SMALL = ["MobileNet", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0"]


def first_kernel(model: keras.Model) -> np.ndarray:
    return next(w for w in model.weights if w.path.endswith("kernel")).numpy()


def test_registry_has_the_required_backbones_and_mobilenetv2_default():
    assert REQUIRED <= set(BACKBONES)
    assert DEFAULT_BACKBONE == "MobileNetV2"


def test_weights_file_names_follow_keras_cache_names():
    assert (
        BACKBONES["MobileNetV2"].weights_file(160)
        == "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"
    )
    assert BACKBONES["MobileNet"].weights_file(160) == "mobilenet_2_5_160_tf_no_top.h5"


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_preprocess_layer_equals_the_family_preprocess_input(name):
    spec = BACKBONES[name]
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = spec.preprocess_input(pixels.copy())
    actual = keras.ops.convert_to_numpy(Preprocess(spec.preprocessing)(pixels))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-5)


def test_preprocess_round_trips_through_its_config():
    layer = Preprocess("caffe", name="preprocess")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(restored, Preprocess) and restored.mode == "caffe"


@pytest.mark.parametrize("name", SMALL)
def test_registered_param_counts_and_depths_match_the_built_backbones(name):
    spec = BACKBONES[name]
    model = load_backbone(name, spec.default_size, "none")
    assert (model.count_params(), len(model.layers)) == (spec.params, spec.depth)


def test_imagenet_weights_load_offline_from_the_cache():
    assert BACKBONES["MobileNetV2"].weights_cached(128)
    pretrained = first_kernel(load_backbone("MobileNetV2", 128, "imagenet"))
    again = first_kernel(load_backbone("MobileNetV2", 128, "imagenet"))
    random_init = first_kernel(load_backbone("MobileNetV2", 128, "none"))
    np.testing.assert_array_equal(pretrained, again)
    assert not np.allclose(pretrained, random_init)


def test_mobilenet_alpha_quarter_loads_its_cached_weights():
    model = load_backbone("MobileNet", 128, "imagenet")
    assert model.count_params() == BACKBONES["MobileNet"].params


def test_a_prebuilt_backbone_is_taken_once_and_the_head_starts_the_same_as_without_it():
    from core.config import ModelConfig

    def head_kernel(classifier):
        return classifier.model.get_layer("logits").get_weights()[0]

    keras.utils.set_random_seed(3)
    built = build_model(ModelConfig(backbone="MobileNet"), 3, 128)
    prebuild("MobileNet", 128)
    keras.utils.set_random_seed(3)
    with_prebuilt = build_model(ModelConfig(backbone="MobileNet"), 3, 128)
    again = load_backbone("MobileNet", 128)  # the prebuilt one was taken: this one is new
    assert again is not with_prebuilt.backbone
    np.testing.assert_array_equal(first_kernel(with_prebuilt.backbone), first_kernel(built.backbone))
    np.testing.assert_array_equal(head_kernel(with_prebuilt), head_kernel(built))
    keras.utils.set_random_seed(3)
    np.testing.assert_array_equal(head_kernel(build_model(ModelConfig(backbone="MobileNet"), 3, 128)),
                                  head_kernel(built))
    prebuild("MobileNet", 128)
    assert load_backbone("MobileNet", 128, "none") is not load_backbone("MobileNet", 128)  # "none" never takes it


def test_a_kept_backbone_is_taken_once_with_its_layers_trainable_again():
    from core.config import ModelConfig

    classifier = build_model(ModelConfig(backbone="MobileNet"), 3, 128)
    assert not classifier.backbone.trainable  # frozen in its classifier
    reuse(classifier.backbone, "MobileNet", 128)
    assert load_backbone("MobileNet", 128, "none") is not classifier.backbone  # only ImageNet weights take it
    taken = load_backbone("MobileNet", 128)
    assert taken is classifier.backbone
    assert taken.trainable and all(layer.trainable for layer in taken.layers)  # as a new backbone's
    assert load_backbone("MobileNet", 128) is not taken
    reuse(taken, "MobileNet", 128)
    reuse(load_backbone("MobileNet", 160), "MobileNet", 160)
    assert load_backbone("MobileNet", 128) is not taken  # one backbone is kept at most: the last

@pytest.fixture
def offline(monkeypatch):
    """Make every Keras download fail as it does without network; record the targets."""
    targets = []

    def fail(url, target, *args):
        targets.append(Path(target))
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setattr(file_utils, "urlretrieve", fail)
    return targets


def test_a_backbone_whose_weights_are_not_cached_is_not_prebuilt(offline):
    assert not BACKBONES["EfficientNetB0"].weights_cached(64)
    prebuild("EfficientNetB0", 64)  # would download: it builds nothing instead, and raises nothing
    assert offline == []
    with pytest.raises(WeightsUnavailableError):  # nothing prebuilt: the job meets the missing weights itself
        load_backbone("EfficientNetB0", 64, "imagenet")


@pytest.mark.parametrize("name,size", [("MobileNetV3Small", 64), ("EfficientNetB0", 64)])
def test_missing_weights_give_an_actionable_message(offline, name, size):
    spec = BACKBONES[name]
    assert not spec.weights_cached(size)
    with pytest.raises(WeightsUnavailableError) as caught:
        load_backbone(name, size, "imagenet")
    error = caught.value
    assert [error.directory / error.file_name] == offline  # exactly what Keras looked for
    assert error.file_name == spec.weights_file(size)
    assert error.directory == settings.keras_models_dir()
    assert str(error.directory) in error.message and error.file_name in error.message
    assert "weights file" in error.hint and "'none'" in error.hint


def test_imagenet_size_outside_the_weight_sizes_lists_the_allowed_sizes():
    with pytest.raises(UserError, match="96, 128, 160, 192, 224"):
        load_backbone("MobileNetV2", 150, "imagenet")


def test_size_below_the_architecture_minimum_is_refused():
    with pytest.raises(UserError, match="any size >= 71"):
        load_backbone("Xception", 64, "none")


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(UserError) as caught:
        load_backbone("ResNet9000", 160)
    assert "MobileNetV2" in caught.value.hint


def test_weights_file_round_trip(tmp_path):
    source = load_backbone("MobileNet", 128, "imagenet")
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    np.testing.assert_array_equal(first_kernel(load_backbone("MobileNet", 128, str(path))),
                                  first_kernel(source))


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_backbone("MobileNet", 128, str(tmp_path / "absent.weights.h5"))


def test_weights_file_of_another_architecture_is_a_user_error(tmp_path):
    path = tmp_path / "mobilenet.weights.h5"
    load_backbone("MobileNet", 128, "none").save_weights(path)
    with pytest.raises(UserError, match="does not fit MobileNetV2"):
        load_backbone("MobileNetV2", 128, str(path))
