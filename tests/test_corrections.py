"""Label corrections (core.data.corrections): kept in a file per dataset, applied by `load`,
recorded in a run's config.json, never touching the user's files."""
import dataclasses
import json

import numpy as np
import pytest

from core import config as config_io
from core.config import DataConfig, RunConfig
from core.data import corrections, datasets
from core.errors import UserError
from core.training import runs

CONFIG = DataConfig(source="folder", name="colours", image_size=64, test_fraction=0.25)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_marks_persist_in_one_file_per_dataset(cache):
    assert corrections.read(CONFIG) == ()
    corrections.mark(CONFIG, "b" * 16, corrections.RELABEL, "green")
    marked = corrections.mark(CONFIG, "a" * 16, corrections.EXCLUDE, "ignored")
    assert marked == (("a" * 16, "exclude", ""), ("b" * 16, "relabel", "green"))
    resplit = dataclasses.replace(CONFIG, val_fraction=0.3, seed=5, batch_size=8)
    assert corrections.read(resplit) == marked  # the same images, split differently
    assert corrections.read(dataclasses.replace(CONFIG, name="other")) == ()
    assert corrections.mark(CONFIG, "a" * 16, None) == (("b" * 16, "relabel", "green"),)
    assert corrections.corrections_file(CONFIG).parent == cache / "corrections"
    assert [p.name for p in (cache / "corrections").iterdir()] == [corrections.corrections_file(CONFIG).name]


def test_an_unreadable_file_is_a_clear_error(cache):
    path = corrections.corrections_file(CONFIG)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot be read"):
        corrections.read(CONFIG)


def test_load_applies_corrections_and_the_run_records_them(cache, colour_data_root, tmp_path):
    before_files = sorted(p for p in colour_data_root.rglob("*"))
    data = datasets.load(CONFIG, root=colour_data_root)
    images, labels = data.splits["train"]
    red, green = data.class_names.index("red"), data.class_names.index("green")
    out, relabel = np.flatnonzero(labels == red)[:2]
    corrections.mark(CONFIG, corrections.image_key(images[out]), corrections.EXCLUDE)
    corrections.mark(CONFIG, corrections.image_key(images[relabel]), corrections.RELABEL, "green")
    corrections.mark(CONFIG, "f" * 16, corrections.EXCLUDE)  # an image not in this data
    config = dataclasses.replace(CONFIG, corrections=corrections.read(CONFIG))

    run = runs.Run.create(tmp_path / "runs", RunConfig(data=config))
    recorded = json.loads((run.path / "config.json").read_text())["data"]["corrections"]
    assert len(recorded) == 3 and run.config.data == config  # config.json round-trips them
    corrected = datasets.load(run.config.data, root=colour_data_root)
    new_images, new_labels = corrected.splits["train"]
    keys = [corrections.image_key(image) for image in new_images]
    assert len(new_labels) == len(labels) - 1
    assert corrections.image_key(images[out]) not in keys
    assert new_labels[keys.index(corrections.image_key(images[relabel]))] == green
    assert np.bincount(new_labels, minlength=3)[red] == np.bincount(labels, minlength=3)[red] - 2
    assert any("1 image(s) excluded, 1 relabelled; 1 marked image(s) are not in this data" in n for n in corrected.notes)
    assert sorted(p for p in colour_data_root.rglob("*")) == before_files  # the user's files are untouched


def test_relabel_to_an_unknown_class_is_a_clear_error(colour_data_root):
    config = dataclasses.replace(CONFIG, corrections=(("0" * 16, "relabel", "purple"),))
    with pytest.raises(UserError, match="purple"):
        datasets.load(config, root=colour_data_root)


def test_config_json_round_trip_keeps_corrections():
    config = RunConfig(data=dataclasses.replace(CONFIG, corrections=(("a" * 16, "exclude", ""),)))
    assert config_io.loads(config_io.dumps(config)) == config


def test_excluding_every_training_image_of_a_class_is_a_clear_error(colour_data_root):
    data = datasets.load(CONFIG, root=colour_data_root)
    images, labels = data.splits["train"]
    blue = data.class_names.index("blue")
    every = tuple((corrections.image_key(image), "exclude", "") for image in images[labels == blue])
    with pytest.raises(UserError, match="no training image of class\\(es\\) blue"):
        datasets.load(dataclasses.replace(CONFIG, corrections=every), root=colour_data_root)


def test_excluding_an_image_keeps_its_split_s_sources_aligned(tmp_path):
    """Excluding drops the image's file path and digest with it, so reports name the right files."""
    import numpy as np

    from core.data import corrections
    from core.data.image_data import ImageData

    images = np.stack([np.full((4, 4, 3), v, "uint8") for v in (10, 20, 30, 40)])
    labels = np.array([0, 0, 1, 1])
    data = ImageData(["a", "b"], {"train": (images, labels), "validation": (images[:2], labels[:2])}, "t",
                     sources={"train": ["a0", "a1", "b0", "b1"], "validation": ["va0", "va1"]},
                     digests={"train": ["d0", "d1", "d2", "d3"], "validation": ["v0", "v1"]})
    key = corrections.image_key(images[1])
    corrections.apply(data, ((key, corrections.EXCLUDE, ""),))
    assert data.sources["train"] == ["a0", "b0", "b1"]
    assert data.digests["train"] == ["d0", "d2", "d3"]
    assert data.sources["validation"] == ["va0"]  # the same pixels in validation are excluded too
    assert len(data.splits["train"][1]) == 3
