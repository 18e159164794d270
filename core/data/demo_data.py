"""The built-in demo dataset: coloured shapes, generated deterministically, no network.

Four classes (circle, square, triangle, star), each image with its own size,
position, rotation and colours over a random gradient background with noise.
Made once into `<cache>/demo-shapes-v1/<class>/*.png` and reused after that, so
it goes through the same folder loader as the user's own images.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core import atomic, settings

CLASSES = ("circle", "square", "triangle", "star")
IMAGES_PER_CLASS = 120
IMAGE_SIZE = 128
_VERSION = "demo-shapes-v1"




def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(math.pi / 4 + k * math.pi / 2, radius) for k in range(4)]
    elif shape == "triangle":
        corners = [(-math.pi / 2 + k * 2 * math.pi / 3, radius) for k in range(3)]
    else:  # a five-pointed star: outer and inner radius alternate
        corners = [(-math.pi / 2 + k * math.pi / 5, radius if k % 2 == 0 else radius * 0.42) for k in range(10)]
    return [(cx + r * math.cos(a + angle), cy + r * math.sin(a + angle)) for a, r in corners]


def render_shape(shape: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    """One random image of `shape`."""
    top, bottom = rng.integers(0, 256, size=(2, 3))
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp) * np.ones((size, size, 3))
    background += rng.normal(0, rng.uniform(2, 18), size=(size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype("uint8"))

    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in (255 - (top + bottom) / 2 + rng.integers(-60, 60, 3)) % 256)
    radius = rng.uniform(0.18, 0.38) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    if shape == "circle":
        squash = rng.uniform(0.85, 1.0)
        draw.ellipse([cx - radius, cy - radius * squash, cx + radius, cy + radius * squash], fill=colour)
    else:
        draw.polygon(_polygon(shape, cx, cy, radius, rng.uniform(0, 2 * math.pi)), fill=colour)
    pixels = np.asarray(image, dtype="float32") + rng.normal(0, 6, size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"))


def generate(directory: Path, images_per_class: int = IMAGES_PER_CLASS, seed: int = 0) -> Path:
    """Write the dataset into `directory/<class>/<class>_NNN.png` (same seed, same pixels)."""
    for index, shape in enumerate(CLASSES):
        rng = np.random.default_rng([seed, index])
        (directory / shape).mkdir(parents=True, exist_ok=True)
        for n in range(images_per_class):
            render_shape(shape, rng).save(directory / shape / f"{shape}_{n:03d}.png")
    return directory


def ensure_demo_dataset(cache_dir: Path | None = None) -> Path:
    """The demo dataset's folder, generating it on first use (atomically, so a
    half-written dataset is never picked up)."""
    target = Path(cache_dir or settings.cache_dir()) / _VERSION
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic.replacing(target, folder=True) as staging:
            generate(staging)
    except OSError:
        if not target.is_dir():  # another process did not win the race: a real failure
            raise
    return target
