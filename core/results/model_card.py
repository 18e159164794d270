"""MODEL_CARD.md for an export folder: what the model is, what it was trained on, how well it does.

Sections follow the usual model card outline (Mitchell et al., "Model Cards for
Model Reporting", 2019), cut to what a run knows: data source and split sizes,
classes, backbone and weights, training settings of each phase, test scores per
class, the export parity table, and known limits.
"""
from __future__ import annotations

import dataclasses

from core.data.image_data import IMBALANCE_RATIO, ImageData
from core.training.runs import Run

#: Below this many test images per class, per-class scores are noted as rough.
FEW_TEST_IMAGES = 20


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def parity_rows(manifest: dict) -> list[list]:
    """The parity table's rows: format, file, size, test accuracy, agreement, max prob. difference,
    ms per image, verdict."""
    rows = []
    for row in manifest["parity"]:
        if "error" in row:
            rows.append([row["format"], row["file"], f"{row['bytes'] / 1e6:.2f} MB", "", "", "", "",
                         f"does not run: {row['error']}"])
            continue
        verdict = "ok" if row["ok"] else f"below {_percent(row['bound'])}"
        rows.append([row["format"], row["file"], f"{row['bytes'] / 1e6:.2f} MB", _percent(row["test_accuracy"]),
                     _percent(row["agreement"]), f"{row['max_probability_difference']:.4f}",
                     f"{row['ms_per_image']:.2f}", verdict])
    return rows


def known_limits(manifest: dict, data: ImageData) -> list[str]:
    """Plain sentences on what a user of the model should know: skipped files, unbalanced
    classes, a small test split, exports that disagree with the Keras model."""
    limits = []
    if data.skipped:
        limits.append(f"{len(data.skipped)} file(s) of the dataset were skipped as unreadable "
                      f"(e.g. {data.skipped[0].path}: {data.skipped[0].reason}).")
    if data.imbalance() > IMBALANCE_RATIO:
        counts = data.counts()["train"]
        limits.append(f"Unbalanced classes: the largest training class has {data.imbalance():.1f}x the images "
                      f"of the smallest ({', '.join(f'{n}: {c}' for n, c in zip(data.class_names, counts))}); "
                      "accuracy hides how the small classes do, read the per-class recall.")
    test_counts = data.counts()["test"]
    if test_counts and min(test_counts) < FEW_TEST_IMAGES:
        limits.append(f"Few test images (as few as {min(test_counts)} in a class): per-class scores are rough.")
    for row in manifest["parity"]:
        if not row["ok"]:
            limits.append(f"{row['file']} " + (f"does not run: {row['error']}." if "error" in row else
                          f"agrees with the Keras model on only {_percent(row['agreement'])} of the test images."))
    limits.append("The model knows only these classes: any image gets one of them, however unlike it is.")
    return limits


def model_card(run: Run, kind: str, manifest: dict, data: ImageData) -> str:
    """The Markdown text of MODEL_CARD.md for the export of the run's `kind` model described by `manifest`."""
    config = run.config
    counts = data.counts()
    lines = [f"# Model card: {config.name or run.id}", "",
             f"Image classifier exported from run `{run.id}` ({kind} model, `{manifest['model']['file']}`) "
             f"on {manifest['created']}.", "",
             "## Input and output", "",
             f"- Input: RGB images {manifest['input']['shape'][1]}x{manifest['input']['shape'][2]}, raw pixels "
             "in [0, 255] (float32; uint8 for model_int8.tflite); resizing is the caller's job, "
             "preprocessing is inside the model.",
             f"- Output: {manifest['output']}; class names in `{manifest['labels_file']}`, in output order.", "",
             "## Data", "",
             f"- Source: {config.data.source} `{config.data.name or 'built-in demo'}` ({data.description}).",
             f"- Split sizes: train {sum(counts['train'])}, validation {sum(counts['validation'])}, "
             f"test {sum(counts['test'])} images.", ""]
    lines += _table(["class", *counts], [[name, *(counts[split][i] for split in counts)]
                                          for i, name in enumerate(data.class_names)])
    lines += ["", "## Model", "",
              f"- Backbone: {config.model.backbone} with `{config.model.weights}` weights, "
              f"{config.model.pooling} pooling, {config.model.hidden_units or 'no'} hidden units, "
              f"dropout {config.model.dropout}.",
              f"- Augmentation in training: {dataclasses.asdict(config.augment)}.", "",
              "## Training", ""]
    phases = {"head (backbone frozen)": config.head, "fine-tuning": config.fine_tune}
    lines += _table(["phase", *(field.name for field in dataclasses.fields(config.head))],
                    [[phase, *dataclasses.asdict(settings).values()]
                     for phase, settings in phases.items() if settings is not None])
    reference = manifest["reference"]
    lines += ["", "## Test scores", ""]
    if reference.get("per_class"):
        lines += [f"Accuracy {_percent(reference['test_accuracy'])} on {reference['test_images']} test images "
                  "never used in training.", ""]
        lines += _table(["class", "precision", "recall", "F1", "images"],
                        [[row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                          row["support"]] for row in reference["per_class"]])
        lines += ["", "## Export parity", "",
                  "Each file run on the whole test split in the runtime a user loads it with (a fresh Python for "
                  ".keras and the SavedModel, the TFLite interpreter for .tflite), compared with the Keras model "
                  f"({reference['ms_per_image']:.2f} ms per image here). Agreement: share of test images given the "
                  "same class as the Keras model (at least 99 % for float, 97 % for int8).", ""]
        lines += _table(["format", "file", "size", "test accuracy", "agreement", "max prob. diff.",
                         "ms / image", "verdict"], parity_rows(manifest))
    else:
        lines += ["The data has no test split: no test scores and no export parity check."]
    lines += ["", "## Known limits", ""] + [f"- {limit}" for limit in known_limits(manifest, data)]
    return "\n".join(lines) + "\n"
