"""The built-in demo dataset is generated deterministically, once, with real variety."""
import numpy as np
from PIL import Image

from core.data import demo_data


def test_generation_is_deterministic(tmp_path):
    a = demo_data.generate(tmp_path / "a", images_per_class=3)
    b = demo_data.generate(tmp_path / "b", images_per_class=3)
    for shape in demo_data.CLASSES:
        for name in sorted(p.name for p in (a / shape).iterdir()):
            assert np.array_equal(np.asarray(Image.open(a / shape / name)), np.asarray(Image.open(b / shape / name)))


def test_classes_and_counts(tmp_path):
    folder = demo_data.ensure_demo_dataset(tmp_path)
    counts = {p.name: len(list(p.glob("*.png"))) for p in folder.iterdir()}
    assert counts == {shape: demo_data.IMAGES_PER_CLASS for shape in demo_data.CLASSES}
    assert demo_data.IMAGES_PER_CLASS >= 100


def test_made_once_and_reused(tmp_path):
    folder = demo_data.ensure_demo_dataset(tmp_path)
    marker = folder / "circle" / "circle_000.png"
    mtime = marker.stat().st_mtime_ns
    assert demo_data.ensure_demo_dataset(tmp_path) == folder
    assert marker.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging dirs left behind


def test_images_vary_within_a_class():
    rng = np.random.default_rng(0)
    images = np.stack([np.asarray(demo_data.render_shape("star", rng), dtype="float32") for _ in range(8)])
    assert images.shape == (8, demo_data.IMAGE_SIZE, demo_data.IMAGE_SIZE, 3)
    mean_colours = images.mean(axis=(1, 2))
    assert mean_colours.std(axis=0).min() > 5  # backgrounds and colours differ
    assert np.abs(images[0] - images[1]).mean() > 10
