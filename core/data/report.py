"""The data report: what a run was trained and measured on, as the Data page shows it.

Kept in each run directory as `data_report.json` and printed by the CLI, so a run's
scores can always be read with the data they came from.
"""
from __future__ import annotations

from core.data.image_data import ImageData
from core.data.images import count_by_reason

REPORT_FILE = "data_report.json"
#: Skipped files and duplicate pairs kept in full in the report (the counts are always complete).
LISTED = 200


def data_report(data: ImageData) -> dict:
    """A JSON-ready dict: description, classes, counts per split and class, skipped files
    (listed, and counted by reason), ignored folders, notes and duplicate pairs."""
    return {
        "description": data.description,
        "classes": data.class_names,
        "counts": {split: dict(zip(data.class_names, per_class)) for split, per_class in data.counts().items()},
        "skipped_by_reason": count_by_reason(data.skipped),
        "skipped": [{"path": s.path, "reason": s.reason} for s in data.skipped[:LISTED]],
        "ignored_folders": data.ignored,
        "notes": data.notes,
        "duplicates": [d.to_dict() for d in data.duplicates[:LISTED]],
        "duplicate_count": len(data.duplicates),
    }


def format_report(report: dict) -> str:
    """A few lines of plain text for a terminal: counts per split, skipped files by reason, notes."""
    lines = [f"Data: {report['description']}"]
    for split, per_class in report["counts"].items():
        classes = ", ".join(f"{name} {n}" for name, n in per_class.items())
        lines.append(f"  {split}: {sum(per_class.values())} images ({classes})")
    skipped = report["skipped_by_reason"]
    if skipped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
        lines.append(f"  skipped {sum(skipped.values())} file(s): {reasons}")
    lines += [f"  note: {note}" for note in report["notes"]]
    return "\n".join(lines)
