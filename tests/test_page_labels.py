"""AppTest of the Label issues page on a tiny finished run whose data holds one red image
filed under "green": it ranks first, a mark is saved to the corrections file at once, survives
a new session, reaches the Data page and the next run's settings; the embedding map plots
every validation and test image."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import workflow
from core.config import DataConfig, RunConfig, TrainConfig
from core.data import corrections
from tests.helpers import COLOURS, make_colour_folders, train_run
from tests.test_page_evaluate import plotted

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
CONFIG = RunConfig(data=DataConfig(source="folder", name="colours", image_size=96, batch_size=16, test_fraction=0.15),
                   head=TrainConfig(epochs=3), name="labels")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = make_colour_folders(tmp_path_factory.mktemp("labels-data"))
    pixels = np.clip(np.array(COLOURS["red"]) + np.random.default_rng(9).normal(0, 25, (64, 64, 3)), 0, 255)
    Image.fromarray(pixels.astype("uint8")).save(root / "colours" / "green" / "zz-really-red.png")
    return root


@pytest.fixture(scope="module")
def run(data_root, tmp_path_factory):
    return train_run(CONFIG, tmp_path_factory.mktemp("runs"), data_root)


def open_page(run, data_root, monkeypatch) -> AppTest:
    monkeypatch.setenv("TL_RUNS_DIR", str(run.path.parent))
    monkeypatch.setenv("TL_DATA_ROOT", str(data_root))
    at = AppTest.from_file(str(APP), default_timeout=240)
    at.session_state["data_config"] = CONFIG.data
    at.run()
    at.switch_page("pages/labels.py")
    at.run()
    assert not at.exception
    return at


def test_label_issues_rank_the_misfiled_image_first_and_marks_persist(run, data_root, monkeypatch):
    at = open_page(run, data_root, monkeypatch)
    at.button[0].click().run()
    assert not at.exception
    captions = [caption for image in at.get("image") for caption in image.captions]
    assert captions[0].startswith("⚑ given green → suggested red") or captions[0].startswith("given green → suggested red")

    data = workflow.load_data(CONFIG.data, data_root)
    red = [i for i, name in enumerate(data.class_names) if name == "red"][0]
    ranked = json.loads((run.path / "insight.json").read_text())["issues"]
    top = data.splits[ranked[0]["split"]][0][ranked[0]["index"]]
    assert ranked[0]["suggested"] == red and ranked[0]["score"] == min(row["score"] for row in ranked)
    key = corrections.image_key(top)
    at.selectbox(key=f"mark-{key}").select("relabel as red").run()
    assert not at.exception
    assert corrections.read(CONFIG.data) == ((key, "relabel", "red"),)
    assert at.session_state["data_config"].corrections == ((key, "relabel", "red"),)

    again = open_page(run, data_root, monkeypatch)  # a new session: the analysis and the mark are still there
    assert again.selectbox(key=f"mark-{key}").value == "relabel as red"
    again.switch_page("pages/data.py")
    fresh = AppTest.from_file(str(APP), default_timeout=240)
    fresh.session_state["data_config"] = CONFIG.data
    fresh.run()
    assert not fresh.exception
    assert any("1 label correction(s)" in caption.value for caption in fresh.caption)
    assert fresh.session_state["data_config"] == dataclasses.replace(CONFIG.data, corrections=((key, "relabel", "red"),))
    assert any("1 relabelled" in warning.value for warning in fresh.warning)


def test_embedding_map_plots_every_validation_and_test_image(run, data_root, monkeypatch):
    at = open_page(run, data_root, monkeypatch)
    if not (run.path / "insight.json").is_file():
        at.button[0].click().run()
    chart = next(json.loads(c.proto.spec) for c in at.get("plotly_chart") if "PCA" in json.loads(c.proto.spec)["layout"]["title"]["text"])
    data = workflow.load_data(CONFIG.data, data_root)
    assert sum(len(plotted(trace["x"])) for trace in chart["data"]) == len(data.splits["validation"][1]) + len(data.splits["test"][1])
    assert {trace["legendgroup"].split(",")[0].strip() for trace in chart["data"]} <= set(data.class_names)
