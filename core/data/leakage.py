"""Leakage between splits: validation and test images that are copies of training images.

A copy of a training image in validation or test inflates every score measured on
it. Three kinds are found, cheapest first:
- byte-identical: the same file content (SHA-1 of the bytes, folder sources);
- pixel-identical: the same pixels once resized (re-saved or renamed copies);
- near-identical: a 64-bit difference hash (dHash: the sign of horizontal
  brightness steps on a 9x8 grayscale thumbnail, Krawetz's "Kind of Like That")
  within `NEAR_BITS` bits of a training image's: re-encoded, slightly resized or
  recoloured copies.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from core.data.array_store import row_blocks
from core.data.image_data import ImageData

#: Hamming distance (of 64 bits) up to which two difference hashes count as near-identical.
NEAR_BITS = 3
#: Images whose thumbnail is nearly flat (brightness range below this) have no
#: meaningful dHash (every step is noise) and are only matched exactly.
FLAT_RANGE = 8
EVALUATION_SPLITS = ("validation", "test")


@dataclass(frozen=True)
class Duplicate:
    """A validation/test image (split, index in it, source) that copies training image `train_index`.

    kind: "byte-identical", "pixel-identical" or "near-identical"; distance: dHash bits apart.
    """

    split: str
    index: int
    source: str
    train_index: int
    train_source: str
    kind: str
    distance: int

    def to_dict(self) -> dict:
        return asdict(self)


def find_duplicates(data: ImageData) -> list[Duplicate]:
    """Validation and test images that duplicate a training image, per the module's three kinds.

    Cost: one 9x8 thumbnail per image and an (evaluation x train) XOR of 64-bit
    hashes; a few milliseconds per thousand images. The images are read block by
    block (`row_blocks`) and each block of evaluation images is compared with all
    training hashes at once, so memory stays bounded whatever the dataset's size.
    """
    train_images, _ = data.splits["train"]
    if not len(train_images):
        return []
    train_pixels: dict[bytes, int] = {}
    for start, block in row_blocks(train_images):
        for offset, image in enumerate(block):
            train_pixels.setdefault(_pixel_key(image), start + offset)
    train_digests = {d: i for i, d in reversed(list(enumerate(data.digests.get("train", []))))}
    train_hashes, train_flat = _dhashes(train_images)
    found = []
    for split in EVALUATION_SPLITS:
        images, _ = data.splits[split]
        digests = data.digests.get(split, [])
        for start, block in row_blocks(images):  # (block x train) distances: memory stays bounded
            hashes, flat = _dhashes(block)
            distances = np.bitwise_count(hashes[:, None] ^ train_hashes[None, :])
            distances[flat] = 64
            distances[:, train_flat] = 64
            for offset, image in enumerate(block):
                index = start + offset
                if index < len(digests) and digests[index] in train_digests:
                    match, kind = train_digests[digests[index]], "byte-identical"
                elif (key := _pixel_key(image)) in train_pixels:
                    match, kind = train_pixels[key], "pixel-identical"
                elif distances[offset].min() <= NEAR_BITS:
                    match, kind = int(distances[offset].argmin()), "near-identical"
                else:
                    continue
                found.append(Duplicate(split, index, data.source(split, index), match, data.source("train", match),
                                       kind, int(distances[offset, match])))
    return found


def drop_duplicates(data: ImageData, duplicates: list[Duplicate]) -> None:
    """Remove the validation/test images of `duplicates` from `data` (in place) and say so in a note."""
    for split in EVALUATION_SPLITS:
        rows = {d.index for d in duplicates if d.split == split}
        if rows:
            data.keep(split, np.asarray([i not in rows for i in range(len(data.splits[split][1]))]))
    data.duplicates = []
    data.notes.append(f"Dropped {len(duplicates)} validation/test images that duplicate training images.")


def summary(duplicates: list[Duplicate]) -> str:
    """One sentence on the leakage found: how many, of which kind, in which split, and the consequence."""
    by_split = {s: sum(d.split == s for d in duplicates) for s in EVALUATION_SPLITS}
    by_kind = {}
    for d in duplicates:
        by_kind[d.kind] = by_kind.get(d.kind, 0) + 1
    where = " and ".join(f"{n} {split}" for split, n in by_split.items() if n)
    kinds = ", ".join(f"{n} {kind}" for kind, n in by_kind.items())
    return (f"Leakage: {where} images duplicate training images ({kinds}): scores measured on them are "
            "inflated. Drop them from validation/test on the Data page (CLI: --drop-duplicates).")


def _pixel_key(image: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest()


def _dhashes(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """64-bit difference hashes (uint64) of (N, H, W, 3) uint8 images, and which are flat.
    Reads `images` block by block (`row_blocks`)."""
    thumbs = np.stack([
        np.asarray(Image.fromarray(image).convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
        for _, block in row_blocks(images) for image in block
    ]) if len(images) else np.zeros((0, 8, 9), np.int16)
    bits = (thumbs[:, :, 1:] > thumbs[:, :, :-1]).reshape(len(images), 64)
    hashes = np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)
    flat = (thumbs.max(axis=(1, 2)) - thumbs.min(axis=(1, 2))) < FLAT_RANGE
    return hashes, flat
