"""The feature cache: the frozen part's outputs on disk, reused by every later run.

What a frozen part computes depends only on its weights, its input images and
the random augmentation drawn for them, so it is stored once and read by any
run (in any process) whose key matches: pooled backbone features ("bottleneck
features", the head's input) and the activations entering fine-tuning's first
unfrozen layer ("the cut"), for every stored augmented view of the training
split and for the validation split (and the test split, keyed the same way, so
evaluating a trained head on it does not run the backbone again).

An entry's key holds everything that determines it: which output (features, or
the activations at cut N), a digest of the frozen layers' weights (so the
backbone, its weights file, a random initialisation's seed and any earlier
fine-tuning are all covered), the backbone's name, the image size, the pooling,
the split's content digest (`core.data.image_cache.content_digest`) and, for an
augmented view, the augmentation layers' config, the seed and the view's index.
Each view is drawn from its own seed (`seed_view`), so view 3 is the same
whether or not views 1 and 2 were cached: asking for 3 views after 2 computes
one. Entries are `ArrayStore` entries (memory-mapped `.npy`, atomic writes,
bounded by `TL_FEATURE_CACHE_GB`, least recently used evicted first).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import keras
import numpy as np

from core import settings
from core.config import RunConfig
from core.data.array_store import ArrayStore, make_key
from core.data.image_cache import content_digest
from core.data.image_data import ImageData
from core.model.augmentation import build_augmentation
from core.model.build import POOLING_LAYERS
from core.model.classifier import Classifier

#: Bump when what is stored changes (dtype, extraction), so old entries are not read.
FORMAT = 1
FEATURES = "features"


def store() -> ArrayStore:
    """The feature store under `settings.feature_cache_dir()`, bounded by `TL_FEATURE_CACHE_GB`."""
    return ArrayStore(settings.feature_cache_dir(), settings.feature_cache_bytes())


def output_name(cut: int | None) -> str:
    """"features" (pooled backbone output) or "cut<N>" (activations entering backbone layer N)."""
    return FEATURES if cut is None else f"cut{cut}"


def weights_digest(layers: list[keras.Layer]) -> str:
    """A BLAKE2b digest (32 hex digits) of the names, shapes and values of `layers`' weights."""
    digest = hashlib.blake2b(digest_size=16)
    for layer in layers:
        for variable in layer.weights:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value))
            digest.update(f"{variable.path}:{value.shape}:{value.dtype}".encode())
            digest.update(value.data)
    return digest.hexdigest()


def seed_view(seed: int, view: int) -> int:
    """The augmentation seed of stored view `view` (0-based) of a run seeded `seed`."""
    return (seed * 1_000_003 + view * 7_919) % (2**31 - 1)


def reseed(augmentation: keras.Layer | None, seed: int) -> None:
    """Set every Random* layer's `SeedGenerator` state to `[seed, 0]`, so what it draws
    next depends on `seed` alone (not on how many views were drawn before)."""
    if augmentation is None:
        return
    for layer in augmentation._flatten_layers():
        for generator in getattr(layer, "_seed_generators", []):
            generator.state.assign(np.asarray([seed, 0], dtype=generator.state.dtype))


@dataclass(frozen=True)
class Request:
    """One cached entry a phase needs: output (see `output_name`) of one split / view.

    `view` is None for the unaugmented validation split.
    """

    output: str
    split: str
    view: int | None = None

    @property
    def label(self) -> str:
        where = self.split if self.view is None else f"view {self.view + 1}"
        return f"{self.output} ({where})"


@dataclass(frozen=True)
class Context:
    """What every key of one model and dataset shares.

    frozen: output name -> digest of the weights it depends on.
    backbone: the Keras name of the backbone model.
    augment: the augmentation layers' config (None: no augmentation).
    probe: config-level fields (data, backbone, weights setting, size, augmentation,
        seed) that let a page ask "is it cached?" without building the model; None
        when the caller did not give them.
    """

    frozen: dict
    backbone: str
    image_size: int
    pooling: str  # the pooling layer's class name
    data: dict  # split -> content digest
    augment: str | None
    seed: int
    probe: dict | None = None

    def fields(self, request: Request) -> dict:
        return {"format": FORMAT, "output": request.output, "frozen": self.frozen[request.output],
                "backbone": self.backbone, "split": request.split, "data": self.data[request.split],
                **self._shared(request)}

    def probe_fields(self, request: Request) -> dict | None:
        if self.probe is None:
            return None
        return {"format": FORMAT, "output": request.output, "split": request.split, **self.probe,
                "data": self.data[request.split], **self._shared(request)}

    def _shared(self, request: Request) -> dict:
        shared = {"image_size": self.image_size}
        if request.output == FEATURES:
            shared["pooling"] = self.pooling
        if request.view is not None:
            shared.update(augment=self.augment, seed=self.seed, view=request.view)
        return shared


def context(classifier: Classifier, cuts: list[int | None], data: ImageData, seed: int,
            probe: dict | None = None, held_out: tuple[str, ...] = ()) -> Context:
    """The `Context` of `classifier` (its backbone frozen below each of `cuts`; None =
    the whole backbone, for pooled features) on `data`'s train and validation splits
    and the `held_out` ones (e.g. "test", keyed like validation)."""
    backbone = classifier.backbone
    frozen = {output_name(cut): weights_digest(backbone.layers if cut is None else backbone.layers[:cut])
              for cut in cuts}
    splits = {split: content_digest(*data.splits[split]) for split in ("train", "validation", *held_out)}
    return Context(frozen, backbone.name, int(data.splits["train"][0].shape[1]), type(classifier.pooling).__name__,
                   splits, augment_text(classifier.augmentation), seed, probe)


def augment_text(augmentation: keras.Layer | None) -> str | None:
    """The augmentation layers' classes and configs (factors and seeds, not their
    auto-numbered names) as canonical JSON; None without augmentation."""
    if augmentation is None:
        return None
    layers = [[type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"}]
              for layer in augmentation.layers]
    return json.dumps(layers, sort_keys=True, default=str)


def key(ctx: Context, request: Request) -> str:
    """The entry name of `request` in `ctx`."""
    return make_key(ctx.fields(request))


def probe_of(run_config: RunConfig) -> dict:
    """The config-level fields of a run's head features (see `Context.probe`)."""
    weights = run_config.model.weights
    return {"backbone": run_config.model.backbone, "weights": weights,
            "init_seed": run_config.seed if weights == "none" else None}


def head_features_cached(run_config: RunConfig, data: ImageData, cache: ArrayStore | None = None) -> bool:
    """Whether every entry head training with `run_config` on `data` reads (each stored
    view, validation and test) is in the cache, so the frozen backbone will not run.

    Matches the config-level probe stored with each entry (`Context.probe`): the
    backbone name, image size, pooling, weights setting, data content, augmentation,
    seed and views. The augmentation's config is taken from the layers the run would build.
    """
    cache = cache or store()
    augment = augment_text(build_augmentation(run_config.augment, seed=run_config.seed))
    pooling = POOLING_LAYERS[run_config.model.pooling].__name__
    unaugmented = ["validation"] + (["test"] if len(data.splits["test"][1]) else [])
    ctx = Context({}, "", run_config.data.image_size, pooling,
                  {split: content_digest(*data.splits[split]) for split in ("train", *unaugmented)},
                  augment, run_config.seed, probe_of(run_config))
    requests = [Request(FEATURES, "train", view) for view in range(run_config.head.views)]
    requests += [Request(FEATURES, split) for split in unaugmented]
    wanted = {make_key(ctx.probe_fields(request)) for request in requests}
    stored = set()
    for folder, _, _ in cache.entries():
        try:
            stored.add(json.loads((folder / "meta.json").read_text()).get("probe"))
        except (OSError, ValueError):
            continue
    return wanted <= stored

