"""Augmentation config -> Keras layers, previews, and the CLI spec."""
import numpy as np
import pytest

from core.config import AugmentConfig
from core.errors import UserError
from core.model.augmentation import build_augmentation, parse_spec, preview, to_spec


def test_layers_follow_the_config():
    config = AugmentConfig(flip="horizontal", rotation=0.1, zoom=0.2, translation=0.1, contrast=0.3, brightness=0.2)
    layers = build_augmentation(config).layers
    assert [type(layer).__name__ for layer in layers] == [
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast", "RandomBrightness",
    ]
    assert layers[0].mode == "horizontal"


def test_all_off_means_no_augmentation():
    assert build_augmentation(AugmentConfig(flip="none", rotation=0.0)) is None


def test_preview_gives_nine_different_views_in_pixel_range():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype("uint8")
    views = preview(image, AugmentConfig(flip="horizontal", rotation=0.2, zoom=0.2), count=9, seed=1)
    assert views.shape == (9, 32, 32, 3) and views.dtype == np.uint8
    assert len({view.tobytes() for view in views}) > 1
    assert not np.array_equal(views[0], image) or not np.array_equal(views[1], image)


def test_preview_is_reproducible_for_a_seed():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype("uint8")
    config = AugmentConfig(rotation=0.2)
    np.testing.assert_array_equal(preview(image, config, seed=3), preview(image, config, seed=3))


def test_inactive_at_inference():
    image = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    layers = build_augmentation(AugmentConfig(flip="horizontal_and_vertical", rotation=0.3))
    np.testing.assert_allclose(np.asarray(layers(image, training=False)), image)


def test_spec_round_trip():
    config = AugmentConfig(flip="vertical", rotation=0.05, zoom=0.1, translation=0.0, contrast=0.2, brightness=0.0)
    assert parse_spec(to_spec(config)) == config
    assert parse_spec("none") == AugmentConfig(flip="none", rotation=0.0)


@pytest.mark.parametrize("spec", ["flip=sideways", "rotation=abc", "spin=0.1", "rotation=2"])
def test_bad_spec_is_a_user_error(spec):
    with pytest.raises(UserError):
        parse_spec(spec)
