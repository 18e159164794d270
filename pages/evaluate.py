"""Evaluate: test accuracy of the head-only and fine-tuned models, per-class scores,
the confusion matrix with a drill-down into any cell, a gallery of predictions with
optional Grad-CAM heatmaps, and predictions on uploaded images."""
import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.data.images import ImageError, load_image
from core.errors import UserError
from core.results import calibration, drilldown, evaluation, gradcam
from core.training import runs
from core.workflow import load_data
from pages._common import image_grid, metric_delta, runs_dir, show_error
from pages._run_models import cached_model, check_classes, has_model, model_version
from pages._run_picker import run_picker_ui
from pages._thumbnails import thumbnail_uri

KINDS = {"final": "Fine-tuned", "head": "Head only"}
GALLERY_SIZE = 12
MISTAKES_SHOWN = 6
NO_HEATMAP, PREDICTED = "none", "predicted class"


def is_fine_tuned(run: runs.Run) -> bool:
    return "fine_tune" in run.read_json("metrics.json", default={})


@st.cache_data(max_entries=16, show_spinner="Evaluating on the test split...")
def test_report(path: str, kind: str, version: int) -> dict:
    """Accuracy, loss, per-class scores, confusion matrix and class probabilities of
    the `kind` model on its run's test split (one prediction pass, cached)."""
    run = runs.Run(path)
    model, classes = cached_model(path, kind, version)
    data = load_data(run.config.data)
    check_classes(run, classes, data.class_names)
    images, labels = data.splits["test"]
    if not len(labels):
        raise UserError(f"The dataset of run {run.id} has no test images.",
                        "Give the data a test fraction above 0 (Data page) or a test folder, and train again.")
    probs = evaluation.predict_probabilities(model, images)
    predicted = probs.argmax(axis=1)
    report = evaluation.classification_report(labels, predicted, classes)
    report.update(loss=evaluation.cross_entropy(labels, probs), probabilities=probs,
                  confusion_matrix=evaluation.confusion_matrix(labels, predicted, len(classes)))
    return report


def headline(reports: dict[str, dict]) -> None:
    """Test accuracy and loss of the head-only and fine-tuned models side by side."""
    head = reports["head"]
    cols = st.columns(4)
    cols[0].metric("Head only: test accuracy", f"{head['accuracy']:.1%}")
    cols[1].metric("Head only: test loss", f"{head['loss']:.4f}")
    tuned = reports.get("final")
    if tuned is None:
        cols[2].caption("Not fine-tuned: the Fine-tune page continues from this head.")
        return
    cols[2].metric("Fine-tuned: test accuracy", f"{tuned['accuracy']:.1%}",
                   **metric_delta(100 * (tuned['accuracy'] - head['accuracy']), "+.1f", " points"))
    cols[3].metric("Fine-tuned: test loss", f"{tuned['loss']:.4f}",
                   **metric_delta(tuned['loss'] - head['loss'], "+.4f", color="inverse"))


def per_class_table(report: dict) -> None:
    st.dataframe(pd.DataFrame(report["per_class"]), hide_index=True, column_config={
        score: st.column_config.NumberColumn(format="%.3f") for score in ("precision", "recall", "f1")})
    st.caption(f"Macro F1 {report['macro']['f1']:.3f} · weighted F1 {report['weighted']['f1']:.3f}. "
               "Precision: of the images predicted as the class, how many were it; recall: of the "
               "images of the class, how many were found.")


def confusion_heatmap(matrix: np.ndarray, classes: list[str]):
    figure = px.imshow(matrix, x=classes, y=classes, text_auto=True, color_continuous_scale="Blues",
                       labels={"x": "Predicted class", "y": "True class", "color": "Images"}, aspect="auto")
    figure.update_xaxes(type="category", side="bottom")
    figure.update_yaxes(type="category")
    # One transparent marker per cell, so a click selects the cell (heatmaps send no selection events).
    cells = [(true, predicted) for true in classes for predicted in classes]
    figure.add_trace(go.Scatter(x=[p for _, p in cells], y=[t for t, _ in cells], mode="markers", showlegend=False,
                                marker=dict(size=40, color="rgba(0,0,0,0)"), hoverinfo="none", name="cells"))
    figure.update_layout(title="Confusion matrix (rows: true class, columns: predicted)", margin=dict(t=50, b=10),
                         clickmode="event+select", dragmode=False)
    return figure


def cell_name(classes: list[str], true: int, predicted: int, count: int) -> str:
    return f"true {classes[true]} → predicted {classes[predicted]} ({count})"


def follow_chart_selection(event, classes: list[str]) -> None:
    """A cell clicked on the chart becomes the drill-down's chosen cell (only when the click is new,
    so picking a cell in the list afterwards is not undone)."""
    points = [(point["y"], point["x"]) for point in (event.selection.points if event else [])]
    if points and points != st.session_state.get("confusion_clicked"):
        true, predicted = classes.index(points[0][0]), classes.index(points[0][1])
        st.session_state["confusion_cell"] = (true, predicted)
    st.session_state["confusion_clicked"] = points


def cell_drilldown(images: np.ndarray, labels: np.ndarray, report: dict, classes: list[str], show) -> None:
    """The images of one confusion-matrix cell with their probabilities, most confident first."""
    matrix = np.asarray(report["confusion_matrix"])
    options = [(t, p) for t in range(len(classes)) for p in range(len(classes)) if matrix[t, p]]
    if st.session_state.get("confusion_cell") not in options:
        st.session_state["confusion_cell"] = next((cell for cell in options if cell[0] != cell[1]), options[0])
    true, predicted = st.selectbox("Cell (click one on the matrix, or pick it here)", options, key="confusion_cell",
                                   format_func=lambda cell: cell_name(classes, *cell, matrix[cell]))
    members = drilldown.cell_members(labels, report["probabilities"], true, predicted)
    probs = report["probabilities"][members]
    table = pd.DataFrame({"image": [thumbnail_uri(image) for image in show(images[members])], "test image": members,
                          **{name: probs[:, i] for i, name in enumerate(classes)}})
    st.dataframe(table, hide_index=True, key="cell_table", row_height=100, column_config={
        "image": st.column_config.ImageColumn("image", width="small"),
        **{name: st.column_config.ProgressColumn(name, format="percent", min_value=0, max_value=1) for name in classes}})
    st.caption(f"{len(members)} test image{'' if len(members) == 1 else 's'}, most confident first; the bars are "
               "each image's class probabilities.")


def caption(classes: list[str], label: int, probs: np.ndarray) -> str:
    """The gallery caption: a green tick or a red cross, the prediction and its confidence."""
    predicted = int(probs.argmax())
    if predicted == label:
        return f"✅ {classes[predicted]} ({probs[predicted]:.0%})"
    return f"❌ {classes[predicted]} ({probs[predicted]:.0%}) · true: {classes[label]}"


def gallery(images: np.ndarray, labels: np.ndarray, report: dict, classes: list[str], seed: int, show) -> None:
    probs = report["probabilities"]
    shown = np.random.default_rng(seed).permutation(len(labels))[:GALLERY_SIZE]
    st.markdown("#### Predictions on test images")
    st.caption("✅ right, ❌ wrong (with the true class). The percentage is the model's confidence.")
    image_grid(show(images[shown]), [caption(classes, labels[i], probs[i]) for i in shown], columns=4)

    st.markdown("#### Top losses")
    worst = evaluation.top_losses(labels, probs, MISTAKES_SHOWN)
    if not worst:
        st.success("No mistakes on the test split.", icon=":material/check_circle:")
        return
    st.caption("The mistakes with the highest loss first: those where the model gave the true class the "
               "least probability. The percentage is the predicted class's probability.")
    losses = evaluation.sample_losses(labels[worst], probs[worst])
    image_grid(show(images[worst]), [f"{caption(classes, labels[i], probs[i])} · loss {loss:.2f}"
                               for i, loss in zip(worst, losses)], columns=4)


@st.cache_data(max_entries=32, show_spinner="Computing Grad-CAM heatmaps...")
def cam_overlays(path: str, kind: str, version: int, images: np.ndarray, class_index: int | None) -> np.ndarray:
    """Grad-CAM overlays (N, S, S, 3) uint8 of `images` for `class_index` (None: each one's predicted class)."""
    model, _ = cached_model(path, kind, version)
    maps, _ = gradcam.heatmaps(model, images, class_index)
    return np.stack([gradcam.overlay(image, heatmap) for image, heatmap in zip(images, maps)])


def heatmap_view(run: runs.Run, kind: str, classes: list[str]):
    """The Grad-CAM choice, and a function turning images into what the galleries show."""
    choice = st.selectbox("Grad-CAM heatmap on the images", [NO_HEATMAP, PREDICTED, *classes], key="evaluate_gradcam",
                          help="Where the model looks (Grad-CAM on the backbone's last convolutional feature map): "
                               "red drove the score of the chosen class most, blue least.")
    if choice == NO_HEATMAP:
        return lambda images: images
    class_index = None if choice == PREDICTED else classes.index(choice)
    return lambda images: cam_overlays(str(run.path), kind, model_version(run, kind), np.asarray(images), class_index)


def probability_chart(classes: list[str], probs: np.ndarray, title: str):
    frame = pd.DataFrame({"class": classes, "probability": probs})
    figure = px.bar(frame, x="class", y="probability", range_y=[0, 1], title=title, text_auto=".1%")
    figure.update_xaxes(type="category")
    figure.update_layout(height=280, margin=dict(t=40, b=10))
    return figure


def predict_uploads(uploads, run: runs.Run, kind: str, min_confidence: float, show) -> None:
    """Class probabilities of each uploaded image; a file that is no usable image gets its reason.

    With `min_confidence` > 0 the probabilities are calibrated (temperature scaling on the
    validation split) and a prediction below it is shown as unsure. `show` draws an image
    batch (N, S, S, 3) as shown: with its Grad-CAM overlay when one is asked for."""
    size = run.config.data.image_size
    loaded = []
    for upload in uploads:
        try:
            loaded.append((upload.name, load_image(upload.getvalue(), size)))
        except ImageError as error:
            st.error(f"{upload.name}: {error.reason}.", icon=":material/broken_image:")
            st.caption(error.hint)
    if not loaded:
        return
    model, classes = cached_model(str(run.path), kind, model_version(run, kind))
    logits = model.predict(np.stack([image for _, image in loaded]).astype("float32"), verbose=0)
    if min_confidence > 0:
        fit = calibration.run_temperature(run, kind, model)
        probs = calibration.scaled_probabilities(logits, fit["temperature"])
        st.caption(f"Calibrated confidence: temperature {fit['temperature']:.2f}, fitted on "
                   f"{fit['validation_images']} validation images (their log loss {fit['nll_before']:.3f} → "
                   f"{fit['nll_after']:.3f}). Below {min_confidence:.0%} a prediction shows as unsure.")
    else:
        probs = evaluation.probabilities(logits)
    for index, ((name, image), row, verdict) in enumerate(
            zip(loaded, probs, calibration.verdicts(probs, classes, min_confidence))):
        left, right = st.columns([1, 3])
        left.image(show(image[None])[0], caption=name)
        title = (f"{name}: unsure (best guess {verdict['predicted']}, {verdict['confidence']:.0%})"
                 if verdict["unsure"] else f"{name}: {verdict['predicted']} ({verdict['confidence']:.0%})")
        right.plotly_chart(probability_chart(classes, row, title), width="stretch", key=f"upload-{index}")


st.title("Evaluate")
st.caption("How well the trained models do on the test split, held out from training "
           "(copies of training images in it are flagged below).")

candidates = [run for run in runs.list_runs(runs_dir()) if has_model(run, "head")]  # every later model builds on the head
if not candidates:
    st.info("No trained model yet: train a head on the Train head page first.", icon=":material/info:")
    st.stop()
run = run_picker_ui(candidates, key="evaluate_run", preferred=st.session_state.get("run_id"))

try:
    kinds = ["head", "final"] if is_fine_tuned(run) else ["head"]
    reports = {kind: test_report(str(run.path), kind, model_version(run, kind)) for kind in kinds}
    test_data = load_data(run.config.data)
    images, labels = test_data.splits["test"]
except UserError as error:
    show_error(error)
    st.stop()
if leaks := [d for d in test_data.duplicates if d.split == "test"]:
    st.warning(f"{len(leaks)} of the {len(labels):,} test images duplicate training images, so the model has seen "
               "them: the test scores are inflated. Drop them on the Data page.", icon=":material/warning:")

headline(reports)
kind = st.radio("Model to inspect", kinds[::-1], format_func=KINDS.get, horizontal=True,
                key="evaluate_model") if len(kinds) > 1 else kinds[0]
report = reports[kind]
classes = [row["class"] for row in report["per_class"]]
st.caption(f"{KINDS[kind]} model of run `{run.id}` on {len(labels):,} test images.")

left, right = st.columns(2)
with left:
    st.markdown("#### Per-class scores")
    per_class_table(report)
with right:
    clicked = st.plotly_chart(confusion_heatmap(report["confusion_matrix"], classes), width="stretch", key="confusion",
                              on_select="rerun", selection_mode="points")
follow_chart_selection(clicked, classes)
show = heatmap_view(run, kind, classes)
st.markdown("#### Drill down into a cell")
cell_drilldown(images, labels, report, classes, show)

gallery(images, labels, report, classes, run.config.seed, show)

st.markdown("#### Try your own images")
uploads = st.file_uploader("Images to classify", accept_multiple_files=True, key="evaluate_uploads",
                           help="JPEG, PNG, BMP, GIF, WebP or TIFF; each is resized to the model's input size.")
min_confidence = st.slider(
    "Show as unsure below this confidence", 0, 99, 0, 1, format="%d%%", key="evaluate_min_confidence",
    help="0 = off. Above 0 the confidence is calibrated first (temperature scaling on the validation split), "
         "so the threshold means what it says.")
if uploads:
    try:
        predict_uploads(uploads, run, kind, min_confidence / 100, show)
    except UserError as error:
        show_error(error)
