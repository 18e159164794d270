"""Grad-CAM: where in an image the model looks when it predicts a class.

Follows the Keras example "Grad-CAM class activation visualization"
(keras.io/examples/vision/grad_cam, after Selvaraju et al. 2017): the gradient
of the class score with respect to the backbone's last convolutional feature
map, averaged over the map's height and width, weights each channel; the ReLU
of the weighted sum of channels, scaled to [0, 1], is the heatmap. The class
score is the logit before the softmax (for a one-logit binary model, the logit
for class 1 and its negative for class 0).
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from core.model.classifier import Classifier

#: Weight of the heatmap in an overlay (the Keras example's 0.4).
OVERLAY_ALPHA = 0.4
#: A three-stop approximation of the "jet" colour map the Keras example uses: dark blue, green, dark red.
_JET = {"black": (0, 0, 143), "mid": (124, 255, 121), "white": (128, 0, 0)}

GradcamParts = tuple[keras.Layer, keras.Model, list[keras.Layer]]


def heatmaps(model: keras.Model, images: np.ndarray, class_index: int | None = None,
             batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps of a classifier built by `core.model.build.build_model`.

    images: raw pixels (N, S, S, 3) in [0, 255], any numeric dtype.
    class_index: the class to explain for every image; None = each image's predicted class.
    Returns (heatmaps float32 (N, h, w) in [0, 1], where h x w is the last
    convolutional feature map's size; the explained class per image, int64 (N,)).
    Raises UserError for a model this app did not build or a backbone without a
    convolutional feature map.
    """
    return grad_cam(Classifier.from_keras(model).gradcam_parts(), images, class_index, batch_size)


def grad_cam(parts: GradcamParts, images: np.ndarray, class_index: int | None = None,
             batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """`heatmaps` on explicit parts: (preprocess layer, a model from preprocessed
    pixels to [last conv map, backbone output], head layers ending in logits)."""
    preprocess, features, head = parts
    maps, explained = [], []
    for start in range(0, len(images), batch_size):
        pixels = tf.convert_to_tensor(np.asarray(images[start:start + batch_size]), tf.float32)
        with tf.GradientTape() as tape:
            conv, x = features(preprocess(pixels), training=False)
            for layer in head:
                x = layer(x, training=False)
            classes = _classes(x, class_index)
            score = tf.reduce_sum(_class_scores(x, classes))
        grads = tape.gradient(score, conv)
        channel_weights = tf.reduce_mean(grads, axis=(1, 2))  # (n, k)
        cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", conv, channel_weights)).numpy()
        peaks = cam.max(axis=(1, 2), keepdims=True)
        maps.append(np.divide(cam, peaks, out=np.zeros_like(cam), where=peaks > 0).astype("float32"))
        explained.append(classes.numpy())
    return np.concatenate(maps), np.concatenate(explained).astype("int64")


def _classes(logits: tf.Tensor, class_index: int | None) -> tf.Tensor:
    count = logits.shape[0]
    if class_index is not None:
        return tf.fill([count], tf.constant(class_index, tf.int64))
    if logits.shape[1] == 1:
        return tf.cast(logits[:, 0] > 0, tf.int64)
    return tf.argmax(logits, axis=1)


def _class_scores(logits: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
    if logits.shape[1] == 1:  # binary: the logit is class 1's score, its negative class 0's
        return tf.where(classes == 1, logits[:, 0], -logits[:, 0])
    return tf.gather(logits, classes, axis=1, batch_dims=1)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The heatmap (h, w) in [0, 1], resized to the image and coloured blue (0) to
    red (1), blended over the image (S, S, 3) uint8 with weight `alpha`.
    Returns uint8 (S, S, 3)."""
    picture = Image.fromarray(np.asarray(image, dtype="uint8"))
    gray = Image.fromarray(np.uint8(np.clip(heatmap, 0, 1) * 255)).resize(picture.size, Image.Resampling.BILINEAR)
    return np.asarray(Image.blend(picture, ImageOps.colorize(gray, **_JET), alpha))


def save_overlays(images: np.ndarray, maps: np.ndarray, names: list[str], folder: Path) -> list[Path]:
    """Write each image's overlay as `<folder>/<stem of name>.gradcam.png` (a repeated
    stem gets "-2", "-3"...); `folder` is created when missing. Returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for image, heatmap, name in zip(images, maps, names):
        stem, count = Path(name).stem, 1
        path = folder / f"{stem}.gradcam.png"
        while path in paths:
            count += 1
            path = folder / f"{stem}-{count}.gradcam.png"
        Image.fromarray(overlay(image, heatmap)).save(path)
        paths.append(path)
    return paths
