"""Label issues and the embedding map: which labels the model contradicts, where classes overlap.

One analysis pass runs the run's frozen backbone over the dataset as loaded without
corrections (so marked images stay visible and can be unmarked), then ranks the
training and validation images (cross-validated heads + cleanlab) and projects the
validation and test images to 2-D. Marks go to the dataset's corrections file at once.
"""
import dataclasses

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st

from core.data import corrections
from core.errors import UserError
from core.results import embedding, evaluation, features, label_issues
from core.training import runs
from core.workflow import load_data
from pages._common import image_grid, runs_dir, show_error, state, update
from pages._run_models import cached_model, check_classes, has_model, model_version
from pages._run_picker import run_picker_ui

ANALYSIS_FILE = "insight.json"
KEEP, EXCLUDE = "keep", "exclude"
RELABEL_PREFIX = "relabel as "
MAP_SPLITS = ("validation", "test")


class BarProgress:
    """A job-style progress (`update`, `stop_requested`) drawn as a Streamlit progress bar."""

    stop_requested = False

    def __init__(self, text: str):
        self.text = text
        self.bar = st.progress(0.0, text=text)

    def update(self, batch: int = 0, batches: int = 1, **_) -> None:
        self.bar.progress(min(batch / max(batches, 1), 1.0), text=f"{self.text} batch {batch} of {batches}")


def raw_data(run: runs.Run):
    """The run's dataset as loaded before any correction."""
    return load_data(dataclasses.replace(run.config.data, corrections=()))


def analyse(run: runs.Run, model, data) -> dict:
    """Pooled features of every split, label issues of train + validation, the embedding
    map of validation + test, saved in the run directory (so a restart keeps it)."""
    pooled = {split: features.pooled_features(model, data.splits[split][0], progress=BarProgress(f"Features of {split}:"))
              for split in data.splits}
    ranked_splits = [s for s in label_issues.SPLITS if len(data.splits[s][1])]
    labels = np.concatenate([data.splits[s][1] for s in ranked_splits])
    where = [(s, i) for s in ranked_splits for i in range(len(data.splits[s][1]))]
    issues = label_issues.find_issues(np.concatenate([pooled[s] for s in ranked_splits]), labels,
                                      data.num_classes, seed=run.config.seed)
    rows = [{"split": where[p][0], "index": where[p][1], "label": int(lab), "suggested": int(sug),
             "score": float(score), "issue": bool(flag)}
            for p, lab, sug, score, flag in zip(issues.position, issues.label, issues.suggested, issues.score, issues.is_issue)]
    map_splits = [s for s in MAP_SPLITS if len(data.splits[s][1])]
    coords = embedding.project(np.concatenate([pooled[s] for s in map_splits]), seed=run.config.seed)
    predicted = np.concatenate([evaluation.predict_probabilities(model, data.splits[s][0]).argmax(axis=1)
                                for s in map_splits])
    points = [{"split": s, "index": i, "label": int(data.splits[s][1][i])} for s in map_splits
              for i in range(len(data.splits[s][1]))]
    for point, (x, y), guess in zip(points, coords, predicted):
        point.update(x=float(x), y=float(y), predicted=int(guess))
    result = {"model_version": model_version(run, "final"), "counts": data.counts(), "issues": rows, "map": points}
    run.write_json(ANALYSIS_FILE, result)
    return result


def choice_of(correction) -> str:
    if correction is None:
        return KEEP
    return EXCLUDE if correction[1] == corrections.EXCLUDE else RELABEL_PREFIX + correction[2]


def save_mark(config, key: str, widget: str) -> None:
    """on_change of an image's correction box: write the mark, and let the session's data
    settings follow when they are the same dataset."""
    choice = st.session_state[widget]
    try:
        if choice == KEEP:
            marked = corrections.mark(config, key, None)
        elif choice == EXCLUDE:
            marked = corrections.mark(config, key, corrections.EXCLUDE)
        else:
            marked = corrections.mark(config, key, corrections.RELABEL, choice.removeprefix(RELABEL_PREFIX))
    except (UserError, OSError) as error:
        st.session_state["mark_error"] = str(error)
        return
    if corrections.dataset_identity(state("data_config")) == corrections.dataset_identity(config):
        update("data_config", corrections=marked)


def issues_gallery(rows: list[dict], data, config) -> None:
    classes = data.class_names
    flagged = sum(row["issue"] for row in rows)
    st.caption(f"{flagged} of {len(rows):,} training and validation images are flagged by cleanlab as likely "
               "mislabelled (⚑); all are ranked, the most doubtful first. Marks are saved at once to the "
               f"dataset's corrections file (`{corrections.corrections_file(config)}`); your image files are never touched.")
    shown = len(rows) if len(rows) <= 6 else st.slider("Images shown", 6, min(96, len(rows)), min(18, len(rows)), 6,
                                                       key="issues_shown")
    marked = {entry[0]: entry for entry in corrections.read(config)}
    for start in range(0, min(shown, len(rows)), 6):
        cells = st.columns(6)
        for cell, row in zip(cells, rows[start:start + 6]):
            image = data.splits[row["split"]][0][row["index"]]
            key = corrections.image_key(image)
            cell.image(image, width="stretch", caption=(
                f"{'⚑ ' if row['issue'] else ''}given {classes[row['label']]} → suggested "
                f"{classes[row['suggested']]} · score {row['score']:.2f} · {row['split']} #{row['index']}"))
            options = [KEEP, EXCLUDE, *[RELABEL_PREFIX + name for name in classes if name != classes[row["label"]]]]
            widget = f"mark-{key}"
            current = choice_of(marked.get(key))
            cell.selectbox("Correction", options, index=options.index(current) if current in options else 0,
                           key=widget, label_visibility="collapsed", on_change=save_mark, args=(config, key, widget))


def embedding_map(points: list[dict], data) -> None:
    classes = data.class_names
    frame = pd.DataFrame(points)
    frame["class"] = [classes[i] for i in frame["label"]]
    frame["prediction"] = np.where(frame["label"] == frame["predicted"], "right", "mistake")
    frame["predicted class"] = [classes[i] for i in frame["predicted"]]
    figure = px.scatter(frame, x="x", y="y", color="class", symbol="prediction", custom_data=["split", "index"],
                        symbol_map={"right": "circle", "mistake": "x"}, hover_data=["split", "index", "predicted class"],
                        title="Pooled features of validation and test images (PCA)", category_orders={"class": classes})
    figure.update_layout(height=480, margin=dict(t=50, b=10), dragmode="lasso")
    event = st.plotly_chart(figure, width="stretch", key="embedding", on_select="rerun", selection_mode=("points", "box", "lasso"))
    picked = [tuple(point["customdata"]) for point in (event.selection.points if event else [])][:12]
    if not picked:
        st.caption("Select points (click, box or lasso) to see their images. ✕ marks a mistake of the model.")
        return
    image_grid(np.stack([data.splits[s][0][i] for s, i in picked]),
               [f"{s} #{i}: {classes[data.splits[s][1][i]]}" for s, i in picked], columns=6)


st.title("Label issues")
st.caption("Which labels the trained model contradicts most, and where classes overlap in its feature space.")

candidates = [run for run in runs.list_runs(runs_dir()) if has_model(run, "final")]
if not candidates:
    st.info("No trained model yet: train a head on the Train head page first.", icon=":material/info:")
    st.stop()
run = run_picker_ui(candidates, key="labels_run", preferred=st.session_state.get("run_id"))
if msg := st.session_state.pop("mark_error", None):
    st.error(f"The mark was not saved: {msg}", icon=":material/error:")

try:
    config = dataclasses.replace(run.config.data, corrections=())
    data = raw_data(run)
    model, classes = cached_model(str(run.path), "final", model_version(run, "final"))
    check_classes(run, classes, data.class_names)
    result = run.read_json(ANALYSIS_FILE, default=None)
    if result and (result.get("model_version"), result.get("counts")) != (model_version(run, "final"), data.counts()):
        result = None  # a retrained model or changed images: the saved analysis no longer fits
    if st.button("Find label issues and draw the map" if result is None else "Analyse again", type="primary"):
        result = analyse(run, model, data)
except UserError as error:
    show_error(error)
    st.stop()

if result is None:
    st.info("One pass of the run's frozen backbone over every image, then cross-validated heads "
            "(a k-nearest-neighbour vote on the pooled features, 5 folds) and cleanlab rank the labels.",
            icon=":material/info:")
    st.stop()

st.markdown("#### Likely label issues")
issues_gallery(result["issues"], data, config)
st.markdown("#### Embedding map")
embedding_map(result["map"], data)
