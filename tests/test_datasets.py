"""Data sources, splits, statistics and bad input (tiny images the tests make)."""
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import DataConfig
from core.data import datasets
from core.errors import UserError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}


def make_images(folder: Path, colour, count: int, size=(20, 14), suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, colour).save(folder / f"img_{i:03d}{suffix}")


@pytest.fixture
def class_folder(tmp_path):
    for name, colour in COLOURS.items():
        make_images(tmp_path / "flat" / name, colour, 20)
    return tmp_path / "flat"


def config(**changes):
    return DataConfig(**{"image_size": 16, "val_fraction": 0.2, "test_fraction": 0.1, **changes})


def test_class_folders_are_split_stratified(class_folder):
    data = datasets.load_folder(class_folder, config())
    assert data.class_names == ["blue", "green", "red"]
    assert data.counts() == {"train": [14, 14, 14], "validation": [4, 4, 4], "test": [2, 2, 2]}
    images, labels = data.splits["train"]
    assert images.shape == (42, 16, 16, 3) and images.dtype == np.uint8
    # Labels match pixels: every "red" image is red.
    red = images[labels == data.class_names.index("red")]
    assert (red[..., 0] > 200).all() and (red[..., 2] < 60).all()


def test_split_is_seeded():
    labels = np.repeat([0, 1, 2], 20)
    first = datasets.stratified_split(labels, 0.2, 0.1, seed=1)
    assert (first == datasets.stratified_split(labels, 0.2, 0.1, seed=1)).all()
    other = datasets.stratified_split(labels, 0.2, 0.1, seed=2)
    assert (first != other).any()
    for split in datasets.SPLITS:  # stratified whatever the seed
        assert np.bincount(labels[first == split]).tolist() == np.bincount(labels[other == split]).tolist()


def test_split_folders_are_used_as_given_and_test_is_carved(tmp_path):
    for split, count in (("train", 10), ("validation", 10)):
        for name, colour in list(COLOURS.items())[:2]:
            make_images(tmp_path / split / name, colour, count)
    data = datasets.load_folder(tmp_path, config())
    assert data.counts() == {"train": [10, 10], "validation": [8, 8], "test": [2, 2]}
    assert any("held out as the test split" in note for note in data.notes)


def test_split_folders_with_test(tmp_path):
    for split, count in (("train", 6), ("val", 3), ("test", 2)):
        for name, colour in list(COLOURS.items())[:2]:
            make_images(tmp_path / split / name, colour, count)
    data = datasets.load_folder(tmp_path, config())
    assert data.counts() == {"train": [6, 6], "validation": [3, 3], "test": [2, 2]}


def test_bad_files_are_skipped_and_reported(class_folder):
    (class_folder / "red" / "notes.txt").write_text("not an image")
    (class_folder / "red" / "fake.jpg").write_text("not an image either")
    good = class_folder / "green" / "img_000.png"
    (class_folder / "green" / "truncated.png").write_bytes(good.read_bytes()[:40])
    (class_folder / "README.md").write_text("loose file")
    data = datasets.load_folder(class_folder, config())
    reasons = {Path(s.path).name: s.reason for s in data.skipped}
    assert set(reasons) == {"notes.txt", "fake.jpg", "truncated.png", "README.md"}
    assert "class folder" in reasons["README.md"]
    assert sum(sum(c) for c in data.counts().values()) == 60  # every good image kept


def test_odd_modes_are_converted_to_rgb(tmp_path):
    make_images(tmp_path / "a", (10, 10, 10), 5)
    folder = tmp_path / "b"
    folder.mkdir()
    Image.new("L", (12, 12), 200).save(folder / "gray.png")
    Image.new("RGBA", (12, 12), (0, 0, 255, 255)).save(folder / "rgba.png")
    Image.new("P", (12, 12), 3).save(folder / "palette.gif")
    Image.new("CMYK", (12, 12), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((12, 12), 60000, dtype=np.uint16)).save(folder / "sixteen.png")
    data = datasets.load_folder(tmp_path, config(val_fraction=0.2, test_fraction=0.0))
    assert not data.skipped
    total = sum(len(labels) for _, labels in data.splits.values())
    assert total == 10
    for images, _ in data.splits.values():
        assert images.shape[1:] == (16, 16, 3)


def test_empty_class_folder_is_left_out_with_a_note(class_folder):
    (class_folder / "empty").mkdir()
    data = datasets.load_folder(class_folder, config())
    assert "empty" not in data.class_names
    assert any("empty" in note for note in data.notes)


def test_one_class_is_refused(tmp_path):
    make_images(tmp_path / "only", (1, 2, 3), 5)
    with pytest.raises(UserError, match="at least two classes"):
        datasets.load_folder(tmp_path, config())


def test_train_without_validation_is_refused(tmp_path):
    make_images(tmp_path / "train" / "a", (1, 2, 3), 5)
    make_images(tmp_path / "train" / "b", (9, 2, 3), 5)
    with pytest.raises(UserError, match="no validation folder"):
        datasets.load_folder(tmp_path, config())


def test_unbalanced_classes_are_reported(tmp_path):
    make_images(tmp_path / "many", (200, 0, 0), 40)
    make_images(tmp_path / "few", (0, 0, 200), 5)
    data = datasets.load_folder(tmp_path, config())
    assert data.imbalance() > datasets.IMBALANCE_RATIO
    assert any("unbalanced" in note for note in data.notes)


def test_class_names_with_spaces_and_non_ascii(tmp_path):
    make_images(tmp_path / "chat noir", (0, 0, 0), 6)
    make_images(tmp_path / "éléphant 象", (250, 250, 250), 6)
    data = datasets.load_folder(tmp_path, config())
    assert data.class_names == ["chat noir", "éléphant 象"]


def test_bad_fractions_are_refused(class_folder):
    with pytest.raises(UserError, match="no training data"):
        datasets.load_folder(class_folder, config(val_fraction=0.6, test_fraction=0.4))


def test_statistics(class_folder):
    make_images(class_folder / "red", (220, 30, 30), 2, size=(64, 32), suffix=".jpg")
    data = datasets.load_folder(class_folder, config())
    stats = data.size_stats()
    assert stats["min_width"] == 20 and stats["max_width"] == 64 and stats["max_height"] == 32
    rows = datasets.class_counts_table(data)
    assert {"split": "train", "class": "red", "images": data.counts()["train"][2]} in rows
    assert len(rows) == 9


def test_folder_source_is_confined_to_the_data_root(class_folder, tmp_path):
    data = datasets.load(config(source="folder", name="flat"), root=tmp_path)
    assert data.num_classes == 3
    with pytest.raises(UserError):
        datasets.load(config(source="folder", name="../.."), root=tmp_path)
    with pytest.raises(UserError):
        datasets.load(config(source="folder", name="/etc"), root=tmp_path)


def test_zip_source_with_an_extra_top_folder(class_folder, tmp_path):
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in class_folder.rglob("*.png"):
            zf.write(path, Path("my photos") / path.relative_to(class_folder))
    data = datasets.load(config(source="zip", name=str(archive)))
    assert data.class_names == ["blue", "green", "red"]
    assert sum(sum(c) for c in data.counts().values()) == 60


def test_demo_source_is_the_default():
    data = datasets.load(DataConfig(image_size=32))
    assert DataConfig().source == "demo"
    assert data.num_classes == 4 and min(sum(c) for c in zip(*data.counts().values())) >= 100


def test_tf_dataset_batches_floats(class_folder):
    data = datasets.load_folder(class_folder, config())
    images, labels = next(iter(data.tf_dataset("train", batch_size=8, shuffle=True, seed=1)))
    assert images.shape == (8, 16, 16, 3) and images.dtype.name == "float32"
    assert float(np.max(images)) > 1.0  # raw pixels in [0, 255], not rescaled


def test_tfds_source_with_mock_data(monkeypatch):
    import tensorflow_datasets as tfds

    asked = []
    with tfds.testing.mock_data(num_examples=30, policy=tfds.testing.MockPolicy.USE_CODE):
        as_dataset = tfds.core.DatasetBuilder.as_dataset

        def spy(self, split=None, **kwargs):
            asked.append(split)
            return as_dataset(self, split=split, **kwargs)

        monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", spy)
        data = datasets.load(DataConfig(source="tfds", name="cats_vs_dogs", image_size=24))
    assert asked == [["train[:40%]", "train[40%:50%]", "train[50%:60%]"]]  # the Keras guide's split
    assert data.class_names == ["cat", "dog"]
    assert [len(data.splits[s][1]) for s in datasets.SPLITS] == [30, 30, 30]  # mock data: 30 per split
    assert data.splits["train"][0].shape[1:] == (24, 24, 3) and data.splits["train"][0].dtype == np.uint8


def test_tfds_bad_split_and_unknown_name():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        with pytest.raises(UserError, match="split"):
            datasets.load(DataConfig(source="tfds", name="cats_vs_dogs", tfds_splits=("train[50%:abc]", "train", "train")))
    with pytest.raises(UserError, match="no dataset"):
        datasets.load(DataConfig(source="tfds", name="no_such_dataset_xyz"))


def test_tfds_offline_download_is_a_clear_message(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve host")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(UserError) as error:
        datasets.load(DataConfig(source="tfds", name="tf_flowers"))
    assert str(tmp_path) in error.value.message and "internet" in error.value.hint


@pytest.mark.integration
def test_shared_cats_vs_dogs_folder(shared_datasets):
    data = datasets.load(DataConfig(source="folder", name="cats_vs_dogs", image_size=64), root=shared_datasets)
    assert data.class_names == ["cats", "dogs"]
    counts = data.counts()
    assert counts["train"] == [700, 700]
    assert [v + t for v, t in zip(counts["validation"], counts["test"])] == [150, 150]
    assert data.size_stats()["max_width"] > 64
