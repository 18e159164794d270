"""Small helpers shared by test modules (conftest.py holds the fixtures)."""
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from core.config import DataConfig, RunConfig, TrainConfig

#: Three colour classes, an easy and fast real dataset for page tests.
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 220)}


#: The tiny colours run (3 classes at 96 px, MobileNetV2 with the real ImageNet weights, head
#: then one fine-tuning epoch) that conftest.py's `colours_run` trains once per session.
COLOURS_RUN_CONFIG = RunConfig(
    data=DataConfig(source="folder", name="colours", image_size=96, batch_size=16, test_fraction=0.25),
    head=TrainConfig(epochs=2), fine_tune=TrainConfig(learning_rate=1e-4, epochs=1, fine_tune_at="140"),
    name="colours",
)


def make_colour_folders(root: Path) -> Path:
    """`root/colours/<class>/*.png`: 12 noisy 64 px images per colour."""
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / "colours" / name).mkdir(parents=True)
        for n in range(12):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / "colours" / name / f"{n:02d}.png")
    return root


def train_run(config, runs_dir: Path, data_root: Path):
    """A finished run of `config`, trained through the job runner as the dashboard trains."""
    from functools import partial

    from core import workflow
    from core.training import runs
    from core.training.jobs import JobManager

    run = runs.Run.create(runs_dir, config)
    manager = JobManager()
    manager.submit(run, partial(workflow.full_job, data_root=data_root))
    assert manager.wait(timeout=300)
    assert run.status()["status"] == runs.FINISHED, run.read_log()
    return run


def copy_run(run, runs_dir: Path):
    """A copy of the finished `run` in `runs_dir` (same id, files and modification times)."""
    from core.training import runs

    shutil.copytree(run.path, runs_dir / run.path.name)
    return runs.Run(runs_dir / run.path.name)
