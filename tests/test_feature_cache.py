"""The on-disk caches: the array store (atomic writes, LRU bound), the feature cache's
key (each part recomputes exactly what it must, a hit equals a recompute), and the
decoded-image cache.

Small data the tests make (a subset of the demo shapes at 128 px) and the real
MobileNet alpha 0.25 weights from ../shared: the smallest real pretrained base.
"""
import os
import time
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.compat.v1.train import summary_iterator

from core import workflow
from core.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from core.data import array_store, datasets, image_cache
from core.data import images as images_module
from core.data.array_store import TMP_PREFIX, ArrayStore
from core.model.augmentation import build_augmentation
from core.model.build import build_model
from core.results import evaluation
from core.training import fast_path, feature_cache, runs
from core.training.progress import Progress, Stopped
from tests.helpers import make_colour_folders

SIZE = 128


# ---- the array store ---------------------------------------------------------------------------------------------

def test_an_entry_round_trips_as_memory_maps(tmp_path):
    store = ArrayStore(tmp_path)
    values = np.arange(24, dtype="float16").reshape(2, 3, 4)
    entry = store.put("k", {"0": values}, {"note": "x"})
    assert isinstance(entry.arrays["0"], np.memmap) and entry.meta["note"] == "x"
    np.testing.assert_array_equal(store.get("k").arrays["0"], values)


def test_an_interrupted_write_is_never_read(tmp_path):
    store = ArrayStore(tmp_path)
    with pytest.raises(RuntimeError), store.writer("k") as writer:
        writer.array("0", (4, 2), "float32")[:2] = 1.0
        raise RuntimeError("killed half-way")
    assert store.get("k") is None and not store.contains("k") and list(tmp_path.iterdir()) == []
    # A writer killed outright leaves its temporary folder: readers never see it.
    (tmp_path / f"{TMP_PREFIX}k-dead").mkdir()
    np.save(tmp_path / f"{TMP_PREFIX}k-dead" / "0.npy", np.zeros(3))
    assert store.get("k") is None and store.entries() == []


def test_eviction_keeps_the_bound_and_drops_the_least_recently_used(tmp_path):
    one = ArrayStore(tmp_path / "probe").put("x", {"0": np.zeros(1000, "float32")})
    entry_bytes = ArrayStore(tmp_path / "probe").size_bytes()
    del one
    store = ArrayStore(tmp_path / "store", limit_bytes=3 * entry_bytes)
    for index in range(3):
        store.put(f"e{index}", {"0": np.full(1000, index, "float32")})
        os.utime(store.path(f"e{index}") / "meta.json", (time.time() - 100 + index, time.time() - 100 + index))
    assert store.get("e0") is not None  # e0 is now the most recently used
    store.put("e3", {"0": np.full(1000, 3, "float32")})
    assert store.size_bytes() <= store.limit_bytes
    assert {folder.name for folder, _, _ in store.entries()} == {"e0", "e2", "e3"}  # e1 was used longest ago


def test_two_writers_of_one_key_leave_one_entry(tmp_path):
    store = ArrayStore(tmp_path)
    with store.writer("k") as first:
        first.array("0", (2,), "int32")[:] = 1
        store.put("k", {"0": np.full(2, 2, "int32")})  # another process wins the race
    np.testing.assert_array_equal(store.get("k").arrays["0"], [2, 2])
    assert len(store.entries()) == 1


# ---- the feature cache's key -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data():
    """The demo shapes at 128 px, 8 training and 8 validation images per class."""
    full = datasets.load(DataConfig(image_size=SIZE, val_fraction=0.2, test_fraction=0.1))
    for split, count in (("train", 8), ("validation", 8)):
        images, labels = full.splits[split]
        keep = np.concatenate([np.flatnonzero(labels == c)[:count] for c in range(full.num_classes)])
        full.splits[split] = (images[keep], labels[keep])
    return full


def new_model(data, augment=AugmentConfig(flip="horizontal", rotation=0.1), size=SIZE, **model):
    keras.utils.set_random_seed(0)
    settings = {"backbone": "MobileNet", **model}
    return build_model(ModelConfig(**settings), data.num_classes, size, build_augmentation(augment, seed=0))


def outputs(model, data, cache, views=2, seed=0, fine_tune_at=None, fine_tune_cut=None, progress=None):
    """(views, validation, {"read": labels, "computed": labels}) of `fast_path.cached_outputs`."""
    part = fast_path.frozen_part(model, model.freeze(fine_tune_at), fine_tune_cut)
    found = fast_path.cached_outputs(model, part, data, views, seed, fine_tune_cut=fine_tune_cut, cache=cache,
                                     progress=progress)
    return found.views, found.validation, {"read": found.read, "computed": found.computed}


ALL = ["features (view 1)", "features (view 2)", "features (validation)"]
VIEWS = ALL[:2]


def test_a_matching_key_reads_and_each_part_recomputes_what_it_must(data, tmp_path):
    cache = ArrayStore(tmp_path)
    model = new_model(data)
    assert outputs(model, data, cache)[2] == {"read": [], "computed": ALL}
    assert outputs(new_model(data), data, cache)[2] == {"read": ALL, "computed": []}  # a new model, same weights
    # One more view computes only that view.
    assert outputs(model, data, cache, views=3)[2]["computed"] == ["features (view 3)"]
    # Augmentation settings and the seed change the views, not validation.
    changed = new_model(data, augment=AugmentConfig(flip="horizontal", rotation=0.2))
    assert outputs(changed, data, cache)[2] == {"read": ["features (validation)"], "computed": VIEWS}
    assert outputs(model, data, cache, seed=1)[2] == {"read": ["features (validation)"], "computed": VIEWS}
    # The data: one changed validation image recomputes validation only.
    images, labels = data.splits["validation"]
    edited = datasets.ImageData(data.class_names, {**data.splits, "validation": (images.copy(), labels)}, "edited")
    edited.splits["validation"][0][0, 0, 0] ^= 1
    assert outputs(model, edited, cache)[2] == {"read": VIEWS, "computed": ["features (validation)"]}
    # Pooling, weights (random init) and image size change everything.
    assert outputs(new_model(data, pooling="flatten"), data, cache)[2]["computed"] == ALL
    assert outputs(new_model(data, weights="none"), data, cache)[2]["computed"] == ALL
    small = datasets.load(DataConfig(image_size=160, val_fraction=0.2, test_fraction=0.1))
    small.splits["train"] = (small.splits["train"][0][:8], small.splits["train"][1][:8])
    small.splits["validation"] = (small.splits["validation"][0][:8], small.splits["validation"][1][:8])
    assert outputs(new_model(small, size=160), small, cache)[2]["computed"] == ALL


def test_the_cut_is_part_of_the_key(data, tmp_path):
    cache = ArrayStore(tmp_path)
    model = new_model(data)
    computed = outputs(model, data, cache, views=1, fine_tune_cut=60)[2]["computed"]
    assert sorted(computed) == sorted(["features (view 1)", "features (validation)", "cut60 (view 1)",
                                       "cut60 (validation)"])
    assert outputs(model, data, cache, views=1, fine_tune_at="60")[2]["computed"] == []
    assert outputs(model, data, cache, views=1, fine_tune_at="70")[2]["computed"] == ["cut70 (view 1)",
                                                                                      "cut70 (validation)"]


def test_changed_weights_below_the_cut_recompute(data, tmp_path):
    cache = ArrayStore(tmp_path)
    model = new_model(data)
    outputs(model, data, cache, views=1, fine_tune_at="60")
    layer = next(layer for layer in model.backbone.layers[:60] if layer.weights)
    layer.weights[0].assign(layer.weights[0] * 1.01)  # as an earlier fine-tuning from below 60 would
    assert len(outputs(model, data, cache, views=1, fine_tune_at="60")[2]["computed"]) == 2


def test_a_hit_is_bit_identical_to_a_recompute(data, tmp_path):
    views, val, _ = outputs(new_model(data), data, ArrayStore(tmp_path / "a"))
    again_views, again_val, report = outputs(new_model(data), data, ArrayStore(tmp_path / "a"))
    fresh_views, fresh_val, _ = outputs(new_model(data), data, ArrayStore(tmp_path / "b"))
    assert report["computed"] == []
    for stored, read, fresh in zip([*views, val], [*again_views, again_val], [*fresh_views, fresh_val]):
        for a, b, c in zip(stored, read, fresh):
            assert a.dtype == np.float16 and a.shape[0] == 32
            np.testing.assert_array_equal(b, c)
    assert not np.array_equal(views[0][0], views[1][0])  # two different augmented views


class StopAfterOneBatch(Progress):
    """Asks to stop once the first extraction batch is done."""

    def update(self, **fields):
        super().update(**fields)
        if str(fields.get("stage", "")).startswith("extracting") and fields.get("batch") == 1:
            self.request_stop()


def test_a_stopped_extraction_leaves_nothing_to_read(data, tmp_path, monkeypatch):
    monkeypatch.setattr(fast_path, "EXTRACT_BATCH", 8)  # 4 batches per split
    cache = ArrayStore(tmp_path)
    with pytest.raises(Stopped):
        outputs(new_model(data), data, cache, views=1, progress=StopAfterOneBatch())
    assert cache.entries() == []
    assert outputs(new_model(data), data, cache, views=1)[2]["computed"] == ALL[::2]


# ---- the decoded-image cache -------------------------------------------------------------------------------------

def test_decoded_images_are_read_back_from_disk_until_a_file_changes(tmp_path, monkeypatch):
    root = make_colour_folders(tmp_path / "root")
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    config = DataConfig(source="folder", name="colours", image_size=32)
    decoded = []
    real_load = datasets.load
    monkeypatch.setattr(datasets, "load", lambda *a, **k: decoded.append(1) or real_load(*a, **k))

    def fresh_process_load():
        datasets._CACHE.clear()  # what another worker process starts with
        return datasets.load_cached(config, root)

    first = fresh_process_load()
    second = fresh_process_load()
    assert len(decoded) == 1
    assert isinstance(second.splits["train"][0], np.memmap) and second.class_names == first.class_names
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(second.splits[split][0], real_load(config, root).splits[split][0])
        assert image_cache.content_digest(*second.splits[split]) == image_cache.content_digest(
            np.array(second.splits[split][0]), np.array(second.splits[split][1]))
    fresh = real_load(config, root)  # what the Data page, reports and corrections read besides the pixels
    assert second.sources == fresh.sources and second.digests == fresh.digests and second.sources["train"]
    assert second.duplicates == fresh.duplicates and second.skipped == fresh.skipped
    image = root / "colours" / "red" / "00.png"
    image.write_bytes((root / "colours" / "blue" / "00.png").read_bytes())  # an edited file
    fresh_process_load()
    assert len(decoded) == 2


# ---- streaming: decoding in chunks straight into the cache, splits as memory maps ---------------------------------

def noisy_jpegs(folder, count, size=40, seed=0):
    """`count` noisy JPEGs in two class folders under `folder` (decoded exactly as stored)."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / ("warm" if index % 2 else "cool") / f"{index:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def test_decoding_in_chunks_writes_chunk_by_chunk_the_same_bits_as_one_chunk(tmp_path, monkeypatch):
    paths = noisy_jpegs(tmp_path / "images", 30)
    (tmp_path / "images" / "cool" / "broken.jpg").write_bytes(b"not a jpeg")
    paths.insert(11, str(tmp_path / "images" / "cool" / "broken.jpg"))
    writes = []
    real_write = images_module.write_rows
    monkeypatch.setattr(images_module, "write_rows", lambda out, start, rows: writes.append((start, len(rows)))
                        or real_write(out, start, rows))
    with ArrayStore(tmp_path / "store").writer("k") as writer:
        chunked = images_module.decode_images(paths, 32, writer.array("0", (31, 32, 32, 3), "uint8"), chunk=8)
    assert writes == [(0, 8), (8, 8), (16, 8), (24, 7)]  # never more than two chunks in memory
    whole = images_module.decode_images(paths, 32, np.zeros((31, 32, 32, 3), "uint8"), chunk=1000)
    stored = ArrayStore(tmp_path / "store").get("k").arrays["0"]
    assert isinstance(stored, np.memmap)
    np.testing.assert_array_equal(stored[chunked.kept], whole.images[whole.kept])  # bit-identical
    assert chunked.kept == whole.kept == [i for i in range(31) if i != 11]
    assert [s.path for s in chunked.skipped] == [paths[11]] and chunked.digests == whole.digests


def test_a_decode_that_dies_half_way_leaves_nothing_to_read(tmp_path, monkeypatch):
    noisy_jpegs(tmp_path / "root" / "photos", 30)
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    config = DataConfig(source="folder", name="photos", image_size=32)
    real_load, calls = images_module._load, []

    def dies_at_the_twentieth(*args):
        calls.append(1)
        if len(calls) == 20:
            raise MemoryError("the worker was killed")
        return real_load(*args)

    monkeypatch.setattr(images_module, "_load", dies_at_the_twentieth)
    monkeypatch.setattr(images_module, "DECODE_CHUNK", 8)
    datasets._CACHE.clear()
    with pytest.raises(MemoryError):
        datasets.load_cached(config, tmp_path / "root")
    assert image_cache.store().entries() == []  # the chunks written before are never read
    assert list(image_cache.store().root.iterdir()) == []  # nor left behind
    monkeypatch.setattr(images_module, "_load", real_load)
    data = datasets.load_cached(config, tmp_path / "root")
    assert sum(len(labels) for _, labels in data.splits.values()) == 30


def test_loaded_splits_are_memory_maps_of_the_cache_equal_to_an_in_memory_load(tmp_path, monkeypatch):
    root = tmp_path / "root"
    for split, count in (("train", 12), ("validation", 8)):
        noisy_jpegs(root / "photos" / split, count, seed=count)
    copy = root / "photos" / "validation" / "cool" / "copy.jpg"
    copy.write_bytes((root / "photos" / "train" / "cool" / "000.jpg").read_bytes())  # leaks: dropped below
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    config = DataConfig(source="folder", name="photos", image_size=32, drop_duplicates=True)
    datasets._CACHE.clear()
    cached = datasets.load_cached(config, root)
    fresh = datasets.load(config, root)  # in memory
    assert any("Dropped 1" in note for note in cached.notes)
    cache_dir = image_cache.store().root.resolve()
    for split in ("train", "validation", "test"):
        images, labels = cached.splits[split]
        assert isinstance(images, np.memmap) and not images.flags.writeable  # not an in-memory array
        assert Path(images.filename).resolve().is_relative_to(cache_dir)
        np.testing.assert_array_equal(images, fresh.splits[split][0])
        np.testing.assert_array_equal(labels, fresh.splits[split][1])
    # Only the splits are kept: the staging array and the split replaced by the drop are not.
    (entry,) = image_cache.store().entries()
    assert len(list(entry[0].glob("*.npy"))) == 6
    # The full path streams a memory-mapped split batch by batch: the same batches, in the same order.
    streamed = list(cached.tf_dataset("train", 5, shuffle=True, seed=3))
    in_memory = list(fresh.tf_dataset("train", 5, shuffle=True, seed=3))
    assert len(streamed) == len(in_memory) == 3  # 12 training images
    for (x, y), (x_mem, y_mem) in zip(streamed, in_memory):
        assert x.dtype == tf.float32
        np.testing.assert_array_equal(x, x_mem)
        np.testing.assert_array_equal(y, y_mem)


def test_decoding_into_the_cache_never_holds_the_dataset_in_memory(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(images_module, "DECODE_CHUNK", 8)
    monkeypatch.setattr(array_store, "BLOCK_ROWS", 8)

    def peak_bytes(count: int) -> int:
        """Peak memory traced (NumPy reports its buffers to tracemalloc) while decoding `count` 64 px JPEGs."""
        noisy_jpegs(tmp_path / str(count) / "photos", count, size=64)
        datasets._CACHE.clear()
        tracemalloc.start()
        try:
            data = datasets.load_cached(DataConfig(source="folder", name="photos", image_size=64), tmp_path / str(count))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert sum(len(labels) for _, labels in data.splits.values()) == count
        return peak

    peak_bytes(20)  # one-time costs (first decodes, imports) out of the way
    small, large = peak_bytes(60), peak_bytes(240)
    more_data = (240 - 60) * 64 * 64 * 3  # 2.2 MB more pixels
    assert large - small < more_data / 4, f"peak {small} -> {large} bytes for {more_data} more bytes of images"


def test_gathering_rows_between_cache_files_copies_each_run_of_rows_once_with_the_same_bits(tmp_path, monkeypatch):
    calls = []
    real_copy = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *args: calls.append(args[2]) or real_copy(*args))
    values = np.random.default_rng(0).integers(0, 256, (40, 5, 5, 3), dtype="uint8")
    rows = np.array([3, 4, 5, 6, 10, 11, 0, 39, 38, 20])  # runs: 3-6, 10-11, 0, 39, 38, 20
    with ArrayStore(tmp_path / "store").writer("k") as writer:
        source = writer.copy("source", values)
        gathered = array_store.take_rows(source, rows, writer.array("out", (len(rows), 5, 5, 3), "uint8"))
    np.testing.assert_array_equal(ArrayStore(tmp_path / "store").get("k").arrays["out"], values[rows])
    assert calls == [4 * 75, 2 * 75, 75, 75, 75, 75] and isinstance(gathered, np.memmap)
    # Anything that is not a whole-file map (here: arrays in memory) is copied block by block.
    in_memory = array_store.take_rows(values, rows, np.zeros((len(rows), 5, 5, 3), "uint8"), size=3)
    np.testing.assert_array_equal(in_memory, values[rows])
    assert len(calls) == 6


# ---- "features cached" before Start ------------------------------------------------------------------------------

def test_the_page_probe_says_cached_after_a_head_job_with_the_same_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    config = RunConfig(data=DataConfig(image_size=SIZE, val_fraction=0.2, test_fraction=0.1),
                       model=ModelConfig(backbone="MobileNet"), head=TrainConfig(epochs=2, views=1))
    data = datasets.load_cached(config.data)
    assert not feature_cache.head_features_cached(config, data)
    run = runs.Run.create(tmp_path / "runs", config)
    metrics = workflow.head_job(run, Progress())
    # Features, and activations at MobileNet's default cut for the Fine-tune page: view 1, validation, test.
    assert metrics["head"]["feature_cache"] == {"read": 0, "computed": 6}
    assert feature_cache.head_features_cached(config, data)
    other = RunConfig(**{**vars(config), "augment": AugmentConfig(flip="vertical")})
    assert not feature_cache.head_features_cached(other, data)

    # A second head run (other head settings) computes nothing, the test split's features included,
    # and its test score is the saved model's on the test images (features stored as float16).
    second_config = RunConfig(**{**vars(config), "model": ModelConfig(backbone="MobileNet", dropout=0.5),
                                 "head": TrainConfig(epochs=1, views=1)})
    second = runs.Run.create(tmp_path / "runs", second_config)
    head = workflow.head_job(second, Progress())["head"]
    assert head["feature_cache"] == {"read": 6, "computed": 0}
    model, classes = workflow.load_run_model(second)
    test_images, test_labels = data.splits["test"]
    on_images = evaluation.evaluate(model, np.asarray(test_images), test_labels, classes)
    assert abs(head["test_loss"] - on_images["loss"]) < 0.01
    assert abs(head["test_accuracy"] - on_images["accuracy"]) <= 1 / len(test_labels)

    # TensorBoard: Keras' callback wrote the epoch metrics into the run directory.
    tags = {}
    for events in (run.path / "tensorboard").rglob("events.out.tfevents.*"):
        for event in summary_iterator(str(events)):
            for value in event.summary.value:
                tags.setdefault((events.parent.name, value.tag), []).append(
                    float(tf.make_ndarray(value.tensor)))
    assert len(tags[("train", "epoch_loss")]) == 2 and len(tags[("validation", "epoch_accuracy")]) == 2
    history = run.history()
    np.testing.assert_allclose(tags[("validation", "epoch_accuracy")], [r["val_accuracy"] for r in history],
                               rtol=1e-5)


def test_a_float_view_of_a_cached_split_streams_with_its_own_dtype(tmp_path):
    """`split.astype("float32")` of a memory map is still an np.memmap (not backed by a
    file): predicting on it must stream float32 batches, not declare them uint8."""
    with ArrayStore(tmp_path / "store").writer("k") as writer:
        writer.array("0", (5, 8, 8, 3), "uint8")[:] = np.arange(5 * 8 * 8 * 3).reshape(5, 8, 8, 3) % 251
    stored = ArrayStore(tmp_path / "store").get("k").arrays["0"]
    floats = stored[::2].astype("float32")
    assert isinstance(floats, np.memmap)
    from core.data.image_data import images_dataset

    batches = [batch.numpy() for batch in images_dataset(floats, None, 2)]
    np.testing.assert_array_equal(np.concatenate(batches), np.asarray(floats))
