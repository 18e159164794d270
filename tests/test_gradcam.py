"""Grad-CAM (core.results.gradcam): shapes, value range, that the heatmap's peak lies
where the class signal is, and that the last conv feature map is found in every backbone."""
import keras
import numpy as np
import pytest
from PIL import Image

from core.config import ModelConfig
from core.model.backbones import BACKBONES
from core.model.build import build_model
from core.model.classifier import last_conv_layer
from core.results import gradcam

SIZE = 64


def red_detector_parts():
    """A hand-set network whose class 1 ("red") logit is the mean of a red-minus-rest
    detector over the image: only red pixels carry the class signal."""
    pixels = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="detector")
    feature_map = conv(pixels)
    conv.set_weights([np.array([[[[1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]]]]) / 255.0, np.zeros(2)])
    features = keras.Model(pixels, [feature_map, feature_map])
    pooling = keras.layers.GlobalAveragePooling2D()
    logits = keras.layers.Dense(2)
    logits.build((None, 2))
    logits.set_weights([np.array([[-1.0, 4.0], [0.0, 0.0]]), np.zeros(2)])
    return keras.layers.Identity(), features, [pooling, logits]


def image_with_red_square(top: int, left: int) -> np.ndarray:
    image = np.full((SIZE, SIZE, 3), 90, dtype="uint8")
    image[top:top + 16, left:left + 16] = (250, 20, 20)
    return image


@pytest.mark.parametrize("top,left", [(4, 4), (40, 8), (24, 44)])
def test_heatmap_peak_lies_in_the_region_that_carries_the_class_signal(top, left):
    maps, classes = gradcam.grad_cam(red_detector_parts(), image_with_red_square(top, left)[None])
    heatmap = maps[0]
    assert classes.tolist() == [1]  # the red square makes "red" the predicted class
    peak = np.unravel_index(heatmap.argmax(), heatmap.shape)
    assert top <= peak[0] < top + 16 and left <= peak[1] < left + 16
    outside = heatmap.copy()
    outside[top:top + 16, left:left + 16] = 0
    assert outside.max() == 0.0  # nothing outside the square is lit


def test_heatmaps_of_a_built_model_have_the_feature_map_shape_and_lie_in_0_1():
    model = build_model(ModelConfig(backbone="MobileNet", weights="none"), 3, 96).model
    images = np.random.default_rng(0).integers(0, 256, (5, 96, 96, 3)).astype("uint8")
    maps, classes = gradcam.heatmaps(model, images, batch_size=2)
    assert maps.shape == (5, 3, 3) and maps.dtype == np.float32  # 96 px / stride 32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    logits = model.predict(images.astype("float32"), verbose=0)
    assert classes.tolist() == logits.argmax(axis=1).tolist()
    chosen, picked = gradcam.heatmaps(model, images, class_index=2)
    assert picked.tolist() == [2] * 5 and chosen.shape == maps.shape


def test_binary_model_explains_class_0_with_the_negated_logit():
    maps, classes = gradcam.grad_cam(_binary_parts(), image_with_red_square(4, 4)[None], class_index=0)
    red, _ = gradcam.grad_cam(_binary_parts(), image_with_red_square(4, 4)[None], class_index=1)
    assert classes.tolist() == [0]
    assert red[0][4:20, 4:20].min() > 0.5 and maps[0].max() == 0.0  # red speaks for class 1, not for 0


def _binary_parts():
    preprocess, features, (pooling, _) = red_detector_parts()
    logit = keras.layers.Dense(1)
    logit.build((None, 2))
    logit.set_weights([np.array([[4.0], [0.0]]), np.zeros(1)])
    return preprocess, features, [pooling, logit]


def test_overlay_is_an_image_of_the_input_size_and_save_writes_pngs(tmp_path):
    image = image_with_red_square(4, 4)
    heatmap = np.zeros((4, 4), "float32")
    heatmap[0, 0] = 1.0
    blended = gradcam.overlay(image, heatmap)
    assert blended.shape == image.shape and blended.dtype == np.uint8
    assert blended[0, 0, 0] > blended[0, 0, 2] and blended[60, 60, 2] > blended[60, 60, 0]  # red hot, blue cold
    paths = gradcam.save_overlays(np.stack([image, image]), np.stack([heatmap, heatmap]),
                                  ["a/cat.jpg", "b/cat.jpg"], tmp_path / "out")
    assert [p.name for p in paths] == ["cat.gradcam.png", "cat-2.gradcam.png"]
    assert np.array_equal(np.asarray(Image.open(paths[0])), blended)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_last_conv_feature_map_is_found_in_every_backbone(name):
    spec = BACKBONES[name]
    size = max(spec.min_size, 75)
    backbone = build_model(ModelConfig(backbone=name, weights="none"), 2, size).backbone
    layer = last_conv_layer(backbone)
    shape = layer.output.shape
    assert len(shape) == 4 and shape[1] >= 1 and shape[3] > 1
    later = backbone.layers[backbone.layers.index(layer) + 1:]
    convs = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)
    assert not any(isinstance(layer, convs) for layer in later)  # no convolution comes after it
    keras.backend.clear_session()
