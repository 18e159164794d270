"""A run's export folder: every format, labels.txt, the parity check, manifest.json and MODEL_CARD.md.

    runs/<run>/export/<kind>/
        model.keras, saved_model.zip, model_float.tflite, model_dynamic_range.tflite, model_int8.tflite
        labels.txt      one class per line, in output order
        manifest.json   what was exported from which model file, and the parity table
        MODEL_CARD.md   data, classes, backbone, training settings, test scores, parity, known limits

The manifest records the model file's size and modification time: a folder
whose model file changed since, or whose files were deleted, is not current
(`read_manifest` returns None) and has to be exported again.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np

from core.data import datasets
from core.errors import UserError
from core.results import evaluation, export, model_card, parity
from core.results.portable import portable_model
from core.training.runs import Run

EXPORT_FOLDER = "export"
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.txt"
CARD_FILE = "MODEL_CARD.md"
#: Training images drawn (seeded) to calibrate int8 activations; the TFLite guide suggests 100-500.
REPRESENTATIVE_IMAGES = 100


def export_folder(run: Run, kind: str) -> Path:
    """Where `export_run` writes by default: <run>/export/<kind>."""
    return run.path / EXPORT_FOLDER / kind


def _model_version(run: Run, kind: str) -> dict:
    stat = run.model_path(kind).stat()
    return {"file": run.model_path(kind).name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def export_run(run: Run, kind: str = "final", formats=tuple(export.FORMATS), out_dir=None,
               data_root: Path | None = None, on_step=None) -> dict:
    """Export the run's `kind` model ("final", "best" or "head") and check every export.

    Writes the portable model (`core.results.portable`) in each of `formats`
    (keys of `export.FORMATS`; int8 is calibrated on training images), labels.txt,
    manifest.json and MODEL_CARD.md into `out_dir` (default `export_folder`), and
    returns the manifest. on_step(text) hears each step. Raises UserError when the
    run has no such model, its data cannot be read or no longer has the model's classes.
    """
    classes = run.read_json("classes.json")
    if not classes or not run.model_path(kind).is_file():
        raise UserError(f"Run {run.id} has no {kind} model to export.", "Train its head first.")
    step = on_step or (lambda text: None)
    step("Loading the model and the run's data")
    model = export.load_model_safe(run.model_path(kind))
    version = _model_version(run, kind)
    data = datasets.load_cached(run.config.data, data_root)
    if data.class_names != classes:
        raise UserError(f"The dataset of run {run.id} now has the classes {', '.join(data.class_names)}, "
                        f"but its model was trained on {', '.join(classes)}.",
                        "Restore the data the run was trained on, or train a new run on this data.")
    out_dir = Path(out_dir) if out_dir is not None else export_folder(run, kind)
    (out_dir / MANIFEST_FILE).unlink(missing_ok=True)  # not current until this export completes
    train_images = data.splits["train"][0]
    step(f"Writing {', '.join(export.FORMATS[key].file_name for key in formats)}")
    files = export.export_formats(
        portable_model(model), out_dir, formats,
        export.representative_images(train_images, REPRESENTATIVE_IMAGES, run.config.seed),
    )
    export.write_labels(classes, out_dir / LABELS_FILE)

    test_images, test_labels = data.splits["test"]
    test_images = np.asarray(test_images, dtype=np.float32)
    reference = {"test_images": int(len(test_labels))}
    rows = []
    if len(test_labels):
        step(f"Predicting the {len(test_labels)} test images with the Keras model")
        logits, seconds = parity.reference_predictions(model, test_images)
        predicted = evaluation.probabilities(logits).argmax(axis=1)
        report = evaluation.classification_report(test_labels, predicted, classes)
        reference.update(test_accuracy=report["accuracy"], per_class=report["per_class"],
                         ms_per_image=1000 * seconds / len(test_labels))
        rows = parity.check_exports(files, logits, test_images, test_labels, step)
    manifest = {
        "run": run.id, "kind": kind, "model": version, "classes": classes, "labels_file": LABELS_FILE,
        "input": {"shape": [None, *model.inputs[0].shape[1:]], "range": [0, 255], "colour": "RGB",
                  "dtype": "float32 (uint8 for model_int8.tflite)"},
        "output": "logits: sigmoid of 1 unit (2 classes) or softmax of one per class",
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "files": {key: {"file": file["file"], "bytes": file["bytes"]} for key, file in files.items()},
        "reference": reference, "parity": rows,
    }
    step("Writing the model card")
    (out_dir / CARD_FILE).write_text(model_card.model_card(run, kind, manifest, data), encoding="utf-8")
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def read_manifest(run: Run, kind: str, out_dir=None) -> dict | None:
    """The manifest of the run's current export of `kind`, or None when there is none,
    a file it lists is gone, or the model file changed since it was written."""
    out_dir = Path(out_dir) if out_dir is not None else export_folder(run, kind)
    try:
        manifest = json.loads((out_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        current = _model_version(run, kind)
    except (OSError, ValueError):
        return None
    files = [out_dir / file["file"] for file in manifest.get("files", {}).values()]
    files += [out_dir / LABELS_FILE, out_dir / CARD_FILE]
    if manifest.get("model") != current or not all(path.is_file() for path in files):
        return None
    return manifest
