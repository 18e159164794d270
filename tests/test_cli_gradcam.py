"""`python -m core predict RUN --gradcam DIR` writes one Grad-CAM overlay PNG per readable image."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from core.config import DataConfig, ModelConfig, RunConfig
from core.data.images import load_image
from core.model.build import build_model
from core.results import gradcam
from core.training import runs
from core.workflow import CLASSES_FILE, load_run_model

ROOT = Path(__file__).resolve().parents[1]


def test_predict_gradcam_writes_the_overlays_as_png(tmp_path):
    config = RunConfig(data=DataConfig(image_size=96), model=ModelConfig(backbone="MobileNet", weights="none"))
    run = runs.Run.create(tmp_path / "runs", config)
    run.save_model(build_model(config.model, 3, 96).model, "final")
    run.write_json(CLASSES_FILE, ["a", "b", "c"])
    images = []
    for n, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        path = tmp_path / f"img{n}.png"
        Image.fromarray(np.full((120, 100, 3), colour, dtype="uint8")).save(path)
        images.append(path)
    bad = tmp_path / "bad.png"
    bad.write_text("not pixels")

    result = subprocess.run([sys.executable, "-m", "core", "predict", str(run.path), *map(str, images), str(bad),
                             "--gradcam", str(tmp_path / "cams")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [Path(e["gradcam"]).name for e in entries[:2]] == ["img0.gradcam.png", "img1.gradcam.png"]
    assert "gradcam" not in entries[2] and "error" in entries[2]
    model, _ = load_run_model(run)
    for path, entry in zip(images, entries):
        pixels = load_image(str(path), 96)
        maps, _ = gradcam.heatmaps(model, pixels[None])
        written = np.asarray(Image.open(entry["gradcam"]))
        assert written.shape == (96, 96, 3)
        assert np.array_equal(written, gradcam.overlay(pixels, maps[0]))
