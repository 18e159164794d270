"""Data you can trust (issue 11): each fault kind on data the tests build, then the
matching ../shared/cases folder."""
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import DataConfig
from core.data import datasets, leakage, scanning, tfds_source
from core.data.images import load_images
from core.data.report import data_report, format_report
from core.errors import UserError
from core.results.chance import chance_level_warning

CASES = Path(__file__).resolve().parents[2] / "shared" / "cases"
RNG = np.random.default_rng(11)


def noise(size=24, seed=None) -> Image.Image:
    rng = np.random.default_rng(seed) if seed is not None else RNG
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_class(folder: Path, count: int, suffix=".png", start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        noise().save(folder / f"img_{i:02d}{suffix}")


def load(root: Path, name: str = "", **changes) -> datasets.ImageData:
    config = DataConfig(source="folder", name=name, image_size=16, **changes)
    return datasets.load(config, root=root)


def reasons(data) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in data.skipped}


def materialize(case: Path, target: Path) -> Path:
    """Copy a case folder; its symbolic links were stored as small files holding the
    link's target, so those become real links again."""
    shutil.copytree(case, target)
    for path in sorted(target.rglob("*")):
        if path.is_file() and path.stat().st_size < 200:
            text = path.read_text(errors="replace").strip()
            if text.startswith(".") and (path.parent / text).exists():
                path.unlink()
                path.symlink_to(text)
    return target


# 1. Confinement at every level ------------------------------------------------------

def test_links_inside_the_root_are_followed_and_links_out_reported_at_every_level(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    make_class(root / "pool" / "red", 3)
    make_class(root / "pool" / "red_more", 2)
    make_class(root / "pool" / "blue", 5)
    make_class(outside / "private", 2)
    red = root / "ds" / "red"
    make_class(red, 4, start=10)
    (red / "link_in.png").symlink_to(root / "pool" / "red" / "img_00.png")
    (red / "more").symlink_to(root / "pool" / "red_more")               # folder link inside: followed
    (red / "leak.png").symlink_to(outside / "private" / "img_00.png")   # file link out: reported
    (red / "nested").mkdir()
    (red / "nested" / "away").symlink_to(outside / "private")            # folder link out, deeper
    (red / "broken.png").symlink_to(root / "missing.png")
    (root / "ds" / "blue").symlink_to(root / "pool" / "blue")            # class folder link inside

    data = load(root, "ds", val_fraction=0.3, test_fraction=0.0)
    counts = {name: sum(data.counts()[s][i] for s in datasets.SPLITS) for i, name in enumerate(data.class_names)}
    assert counts == {"blue": 5, "red": 4 + 1 + 2}
    assert reasons(data) == {"leak.png": scanning.LINK_OUT, "away": scanning.LINK_OUT, "broken.png": scanning.LINK_BROKEN}
    assert not any("outside" in source for sources in data.sources.values() for source in sources)


def test_case_20_symlinks(tmp_path):
    case = materialize(CASES / "20-symlinks", tmp_path / "case")
    data = load(case, "data", test_fraction=0.0)
    totals = np.sum([data.counts()[s] for s in datasets.SPLITS], axis=0).tolist()
    assert dict(zip(data.class_names, totals)) == {"blue": 12, "red": 12}
    shapes = load(case / "data_root", "shapes", test_fraction=0.0)
    assert reasons(shapes) == {"looks_local.jpg": scanning.LINK_OUT}
    assert not any("private" in s for sources in shapes.sources.values() for s in sources)


# 2. Hidden and tool folders ---------------------------------------------------------

@pytest.mark.parametrize("folder", [".ipynb_checkpoints", "__MACOSX", "@eaDir", "__pycache__", ".git", ".cache"])
def test_hidden_and_tool_folders_never_feed_training_at_any_depth(tmp_path, folder):
    make_class(tmp_path / "ds" / "red", 5)
    make_class(tmp_path / "ds" / "blue", 5)
    make_class(tmp_path / "ds" / "blue" / folder, 2, start=50)
    make_class(tmp_path / "ds" / "red" / "deeper" / folder, 1, start=60)
    make_class(tmp_path / "ds" / folder / "green", 5)
    data = load(tmp_path, "ds", test_fraction=0.0)
    assert data.class_names == ["blue", "red"]
    assert sum(sum(c) for c in data.counts().values()) == 10
    assert sorted(data.ignored) == sorted([folder, f"blue/{folder}", f"red/deeper/{folder}"])
    assert any("hidden or tool folder" in note for note in data.notes)


def test_case_06_os_junk(tmp_path):
    for name in ("data", "data_split"):
        data = load(CASES / "06-os-junk-files", name)
        totals = np.sum([data.counts()[s] for s in datasets.SPLITS], axis=0).tolist()
        assert data.class_names == ["blue", "red"]
        assert totals == ([10, 10] if name == "data" else [12, 12])
        assert not any(".ipynb_checkpoints" in s or "__MACOSX" in s for v in data.sources.values() for s in v)


# 3. Strict decoding -----------------------------------------------------------------

def garbled_jpeg() -> bytes:
    """A JPEG whose entropy-coded scan is overwritten with random bytes (headers intact)."""
    buffer = io.BytesIO()
    noise(64, seed=3).save(buffer, "JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    scan = data.index(b"\xff\xda") + 20
    data[scan + 50: -2] = np.random.default_rng(1).integers(0, 256, len(data) - 52 - scan, dtype=np.uint8).tobytes()
    return bytes(data)


def test_a_garbled_jpeg_that_pillow_decodes_is_skipped_with_its_reason(tmp_path):
    path = tmp_path / "garbled.jpg"
    path.write_bytes(garbled_jpeg())
    Image.open(path).load()  # the kind: Pillow decodes it without a word
    good = tmp_path / "good.jpg"
    noise(32).save(good, quality=95)
    loaded = load_images([str(path), str(good)], 16)
    assert loaded.kept == [1]
    assert "corrupt JPEG data" in loaded.skipped[0].reason


def test_case_01_corrupt_jpegs():
    data = load(CASES / "01-corrupt-jpeg", "data")
    found = reasons(data)
    assert set(found) == {"truncated_half.jpg", "garbled_scan.jpg", "error_page.jpg"}
    assert "corrupt JPEG" in found["garbled_scan.jpg"] and found["error_page.jpg"] == "not an image"
    assert sum(sum(c) for c in data.counts().values()) == 24


# 4. Refusals name the real cause ----------------------------------------------------

def test_a_class_too_small_for_the_split_is_named_with_its_count(tmp_path):
    make_class(tmp_path / "ds" / "red", 10)
    make_class(tmp_path / "ds" / "blue", 10)
    make_class(tmp_path / "ds" / "green", 2)
    with pytest.raises(UserError) as raised:
        load(tmp_path, "ds", test_fraction=0.15)
    assert "'green' has 2 images" in raised.value.message and "at least 3" in raised.value.message
    assert "test fraction to 0" in raised.value.hint
    data = load(tmp_path, "ds", test_fraction=0.0)  # as the hint says
    assert data.counts()["train"][data.class_names.index("green")] == 1


def test_a_single_wrapper_folder_is_used_and_said(tmp_path):
    make_class(tmp_path / "download" / "flower_photos" / "red", 6)
    make_class(tmp_path / "download" / "flower_photos" / "blue", 6)
    (tmp_path / "download" / "flower_photos" / "LICENSE.txt").write_text("licence")
    data = load(tmp_path, "download")
    assert data.class_names == ["blue", "red"]
    assert any("flower_photos" in note for note in data.notes)


def test_nothing_usable_says_what_was_found_instead(tmp_path):
    for name in ("red", "blue"):
        (tmp_path / "ds" / name).mkdir(parents=True)
        (tmp_path / "ds" / name / "notes.txt").write_text("text")
    with pytest.raises(UserError) as raised:
        load(tmp_path, "ds")
    assert "found none" in raised.value.message and "2 not an image file type" in raised.value.message


def test_a_class_of_unreadable_files_is_named_with_the_reasons(tmp_path):
    make_class(tmp_path / "ds" / "red", 6)
    make_class(tmp_path / "ds" / "blue", 6)
    (tmp_path / "ds" / "green").mkdir()
    for i in range(4):
        (tmp_path / "ds" / "green" / f"{i}.jpg").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(UserError) as raised:
        load(tmp_path, "ds")
    assert "'green' could be read" in raised.value.message and "4 not an image" in raised.value.message


def test_case_17_tiny_classes_and_23_wrong_root_level():
    for name, count in (("data_1_image", 1), ("data_2_images", 2)):
        with pytest.raises(UserError, match=f"'green' has {count} image"):
            load(CASES / "17-tiny-classes", name)
    assert load(CASES / "17-tiny-classes", "data_3_images").class_names == ["blue", "green", "red"]
    split = load(CASES / "17-tiny-classes", "data_split_missing_val_class")
    assert any("'green' have no validation images" in note for note in split.notes)
    for name in ("data", "data_split_wrapped"):
        assert load(CASES / "23-wrong-root-level", name).class_names == ["blue", "red"]


# 5. Leakage -------------------------------------------------------------------------

def test_byte_pixel_and_near_copies_in_validation_are_found_and_can_be_dropped(tmp_path):
    ds = tmp_path / "ds"
    for name in ("red", "blue"):
        make_class(ds / "train" / name, 8)
        make_class(ds / "validation" / name, 5, start=20)  # distinct images: not flagged
    train_red = sorted((ds / "train" / "red").iterdir())
    shutil.copy(train_red[0], ds / "validation" / "red" / "copy.png")                 # byte-identical
    Image.open(train_red[1]).save(ds / "validation" / "red" / "resaved.bmp")          # pixel-identical
    smooth = Image.fromarray(np.kron(np.random.default_rng(2).integers(0, 256, (6, 6, 3)), np.ones((8, 8, 1))).astype("uint8"))
    smooth.save(ds / "train" / "blue" / "smooth.png")
    smooth.save(ds / "validation" / "blue" / "reencoded.jpg", quality=85)             # near-identical
    data = load(tmp_path, "ds", test_fraction=0.0)
    kinds = {Path(d.source).name: (d.kind, Path(d.train_source).name) for d in data.duplicates}
    assert {name: kind for name, (kind, _) in kinds.items()} == {
        "copy.png": "byte-identical", "resaved.bmp": "pixel-identical", "reencoded.jpg": "near-identical"}
    assert kinds["copy.png"][1] == train_red[0].name and kinds["reencoded.jpg"][1] == "smooth.png"
    assert any("Leakage: 3" in note for note in data.notes)

    dropped = load(tmp_path, "ds", test_fraction=0.0, drop_duplicates=True)
    kept = [Path(s).name for split in ("validation", "test") for s in dropped.sources[split]]
    assert not {"copy.png", "resaved.bmp", "reencoded.jpg"} & set(kept) and len(kept) == 10
    assert any("Dropped 3" in note for note in dropped.notes)


def test_case_18_duplicates_across_splits():
    data = load(CASES / "18-duplicates-across-splits", "data_split")
    assert len(data.duplicates) == 8 and {d.kind for d in data.duplicates} == {"byte-identical"}
    flat = load(CASES / "18-duplicates-across-splits", "data_flat")
    assert flat.duplicates and all("(1)" in d.source + d.train_source for d in flat.duplicates)


def test_no_false_duplicates_on_the_demo_data():
    data = datasets.load(DataConfig(image_size=64))
    assert leakage.find_duplicates(data) == []


# 6. The data report -----------------------------------------------------------------

def test_the_data_report_counts_splits_classes_skipped_files_and_duplicates():
    data = load(CASES / "01-corrupt-jpeg", "data")
    report = data_report(data)
    assert report["counts"]["train"] == dict(zip(data.class_names, data.counts()["train"]))
    assert sum(report["skipped_by_reason"].values()) == 3 and len(report["skipped"]) == 3
    text = format_report(report)
    assert "skipped 3 file(s)" in text and "train: 16 images" in text


# 8. TensorFlow Datasets on a fresh machine ------------------------------------------

def test_the_real_tfds_builder_path_imports_what_tfds_loads_lazily(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    builder = tfds_source._builder("tf_flowers")
    # `url_infos` runs DatasetBuilder.code_path, which imports importlib_resources on first use.
    assert type(builder).url_infos


def test_a_missing_module_is_a_broken_install_not_a_network_failure(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))

    def missing(self, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", missing)
    with pytest.raises(UserError) as raised:
        datasets.load(DataConfig(source="tfds", name="tf_flowers", image_size=16))
    assert "'importlib_resources' is not installed" in raised.value.message
    assert "pip install" in raised.value.hint and "internet" not in str(raised.value)


# 9. A model at chance ---------------------------------------------------------------

@pytest.mark.parametrize("accuracy, counts, at_chance", [
    (0.25, [10, 10, 10, 10], True), (0.29, [10, 10, 10, 10], True), (0.60, [10, 10, 10, 10], False),
    (0.80, [80, 10, 10], True), (0.95, [80, 10, 10], False), (None, [5, 5], False),
])
def test_chance_level_rule(accuracy, counts, at_chance):
    warning = chance_level_warning(accuracy, counts)
    assert (warning is not None) == at_chance
    if at_chance:
        assert "chance level" in warning and "ImageNet weights" in warning and "unfreezing" in warning


def test_dropping_duplicates_that_empty_validation_says_so(tmp_path):
    """Every validation image copies a training image: dropping them names that cause, not a fraction."""
    import numpy as np
    from PIL import Image

    from core.config import DataConfig
    from core.data import datasets
    from core.errors import UserError

    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        pictures = [rng.integers(0, 255, (24, 24, 3), dtype="uint8") for _ in range(4)]
        for split, chosen in (("train", pictures), ("validation", pictures[:1])):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for index, pixels in enumerate(chosen):
                Image.fromarray(pixels).save(folder / f"{index}.png")
    config = DataConfig(source="folder", name="data", image_size=24, drop_duplicates=True)
    with pytest.raises(UserError) as refused:
        datasets.load(config, root=tmp_path)
    assert "leaves no validation image" in refused.value.message
    assert "validation fraction" not in refused.value.hint
