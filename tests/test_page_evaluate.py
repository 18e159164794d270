"""AppTest of the Evaluate page on a tiny finished run (3 colour classes at 96 px,
head + 1 fine-tune epoch): the test scores core computes for both models, the
confusion heatmap, the prediction gallery, and uploads good and bad.
"""
import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import workflow
from core.data.images import load_image
from core.results import evaluation
from core.training import runs
from tests.helpers import COLOURS, COLOURS_RUN_CONFIG

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
CONFIG = COLOURS_RUN_CONFIG  # trained once per session (conftest.py's colours_run)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def plotted(values) -> np.ndarray:
    """An array from a Plotly JSON field (plain list, or Plotly's base64 typed array)."""
    if isinstance(values, dict):
        array = np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
        return array.reshape([int(n) for n in values["shape"].split(",")]) if "shape" in values else array
    return np.asarray(values)


@pytest.fixture(scope="module")
def data_root(colour_data_root) -> Path:
    return colour_data_root


@pytest.fixture(scope="module")
def run(colours_run) -> runs.Run:
    return colours_run


@pytest.fixture(scope="module")
def expected(run, data_root) -> dict:
    """core.results.evaluation's report of each model on the run's test split."""
    images, labels = workflow.load_data(CONFIG.data, data_root).splits["test"]
    reports = {}
    for kind in ("head", "final"):
        model, classes = workflow.load_run_model(run, kind)
        reports[kind] = evaluation.evaluate(model, images, labels, classes)
    return reports


@pytest.fixture
def page(run, data_root, monkeypatch) -> AppTest:
    monkeypatch.setenv("TL_RUNS_DIR", str(run.path.parent))
    monkeypatch.setenv("TL_DATA_ROOT", str(data_root))
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["data_config"] = CONFIG.data
    at.run()
    at.switch_page("pages/evaluate.py")
    at.run()
    assert not at.exception
    return at


def metrics(at: AppTest) -> dict:
    return {metric.label: metric.value for metric in at.metric}


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_head_and_fine_tuned_test_scores_are_the_ones_core_computes(page, expected):
    shown = metrics(page)
    for kind, name in (("head", "Head only"), ("final", "Fine-tuned")):
        assert shown[f"{name}: test accuracy"] == f"{expected[kind]['accuracy']:.1%}"
        assert shown[f"{name}: test loss"] == f"{expected[kind]['loss']:.4f}"
    delta = next(metric for metric in page.metric if metric.label == "Fine-tuned: test accuracy").delta
    assert delta == f"{100 * (expected['final']['accuracy'] - expected['head']['accuracy']):+.1f} points"


def test_per_class_scores_and_confusion_heatmap_of_the_inspected_model(page, expected):
    assert page.radio(key="evaluate_model").value == "final"
    report = expected["final"]
    table = page.dataframe[0].value
    assert table["class"].tolist() == sorted(COLOURS)
    assert table["support"].tolist() == [row["support"] for row in report["per_class"]]
    assert table["f1"].tolist() == pytest.approx([row["f1"] for row in report["per_class"]])

    heatmap = next(chart for chart in charts(page) if chart["data"][0]["type"] == "heatmap")
    assert plotted(heatmap["data"][0]["z"]).tolist() == report["confusion_matrix"]
    assert heatmap["data"][0]["x"] == heatmap["data"][0]["y"] == sorted(COLOURS)
    assert heatmap["layout"]["xaxis"]["title"]["text"] == "Predicted class"
    assert heatmap["layout"]["yaxis"]["title"]["text"] == "True class"

    page.radio(key="evaluate_model").set_value("head").run()
    heatmap = next(chart for chart in charts(page) if chart["data"][0]["type"] == "heatmap")
    assert plotted(heatmap["data"][0]["z"]).tolist() == expected["head"]["confusion_matrix"]


def test_gallery_marks_each_test_image_right_or_wrong(page, expected):
    report = expected["final"]
    captions = [caption for image in page.get("image") for caption in image.captions]
    gallery = [caption for caption in captions if "loss" not in caption]
    mistakes = [caption for caption in captions if "loss" in caption]
    tests = len(report["predictions"])
    assert len(gallery) == tests  # fewer than a gallery's worth of test images: all are shown
    assert sum(caption.startswith("✅") for caption in gallery) == round(report["accuracy"] * tests)
    assert all(caption.startswith("❌") and "true: " in caption for caption in mistakes)
    assert len(mistakes) == min(6, tests - round(report["accuracy"] * tests))


def test_uploads_get_probabilities_or_a_clear_message(page, run):
    red = np.full((70, 70, 3), COLOURS["red"], dtype="uint8")
    huge = io.BytesIO()
    Image.new("1", (8000, 8000)).save(huge, format="PNG")  # 64 M pixels, small file
    page.file_uploader(key="evaluate_uploads").set_value([
        ("red.png", png(red), "image/png"),
        ("notes.txt", b"just text", "text/plain"),
        ("cut.png", png(red)[:120], "image/png"),
        ("huge.png", huge.getvalue(), "image/png"),
    ]).run()
    assert not page.exception
    errors = [error.value for error in page.error]
    assert "notes.txt: not an image." in errors
    assert "cut.png: truncated or corrupt image data." in errors
    assert any(error.startswith("huge.png: image too large: 8000×8000 pixels") for error in errors)

    bars = [chart for chart in charts(page) if chart["data"][0]["type"] == "bar"]
    assert len(bars) == 1
    model, classes = workflow.load_run_model(run, "final")
    probs = evaluation.predict_probabilities(model, load_image(png(red), 96)[None].astype("float32"))[0]
    assert bars[0]["data"][0]["x"] == classes
    assert plotted(bars[0]["data"][0]["y"]) == pytest.approx(probs, abs=1e-5)
    assert bars[0]["layout"]["title"]["text"].startswith(f"red.png: {classes[probs.argmax()]}")


def test_unsure_threshold_calibrates_and_marks_low_confidence_uploads(page, run):
    """Above 0 the upload's probabilities are the temperature-scaled ones stored with the run,
    and a prediction below the threshold is titled unsure."""
    from core.results import calibration

    model, classes = workflow.load_run_model(run, "final")
    temperature = calibration.run_temperature(run, "final", model)["temperature"]  # as the page fits it

    def calibrated(pixels):
        logits = model.predict(load_image(png(pixels), 96)[None].astype("float32"), verbose=0)
        return calibration.scaled_probabilities(logits, temperature)[0]

    mixes = [(128, 128, 128), (130, 115, 50), (40, 125, 140), (130, 50, 130)]  # grey and halfway colours
    candidates = [np.full((70, 70, 3), colour, dtype="uint8") for colour in mixes]
    candidates.append(np.random.default_rng(0).integers(0, 256, (70, 70, 3), dtype="uint8"))
    for left, right in ((0, 1), (1, 2), (0, 2)):  # half one class's colour, half another's
        halves = np.zeros((70, 70, 3), dtype="uint8")
        halves[:, :35], halves[:, 35:] = list(COLOURS.values())[left], list(COLOURS.values())[right]
        candidates.append(halves)
    muddy = min(candidates, key=lambda pixels: calibrated(pixels).max())  # the least sure of them
    page.file_uploader(key="evaluate_uploads").set_value([("grey.png", png(muddy), "image/png")])
    page.slider(key="evaluate_min_confidence").set_value(99).run()
    assert not page.exception
    fit = run.read_json(calibration.CALIBRATION_FILE)["final"]
    assert fit["nll_after"] <= fit["nll_before"] and fit["validation_images"] > 0
    assert fit["temperature"] == temperature
    probs = calibrated(muddy)
    bar = [chart for chart in charts(page) if chart["data"][0]["type"] == "bar"][0]
    assert plotted(bar["data"][0]["y"]) == pytest.approx(probs, abs=1e-5)
    assert probs.max() < 0.99
    assert bar["layout"]["title"]["text"] == f"grey.png: unsure (best guess {classes[probs.argmax()]}, {probs.max():.0%})"

    page.slider(key="evaluate_min_confidence").set_value(1).run()
    bar = [chart for chart in charts(page) if chart["data"][0]["type"] == "bar"][0]
    assert bar["layout"]["title"]["text"] == f"grey.png: {classes[probs.argmax()]} ({probs.max():.0%})"
