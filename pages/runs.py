"""Runs: every training run on disk. Compare their curves, load one into the session,
export its model, delete it, and run the from-scratch / transfer / fine-tune comparison."""
import functools

import pandas as pd
import streamlit as st

from core import workflow
from core.data.report import REPORT_FILE
from core.errors import UserError
from core.results import compare, export, packaging, parity
from core.training import runs
from core.training.jobs import JOB_QUEUED
from pages import _quick_tries as quick_tries
from pages._common import (
    RUN_PARAM,
    job_manager,
    live_job,
    load_into_session,
    open_run,
    runs_dir,
    session_run_config,
    show_error,
    size_text,
    user_errors,
)
from pages._curves import comparison_curves
from pages._run_picker import run_label, run_picker_ui, run_status

MODEL_KINDS = {"final": "Final (after the last phase)", "best": "Best epoch", "head": "Head only"}
DEFAULT_EXPORTS = ("keras", "tflite")  # what is most often shipped: the others are one click away
#: The runs table re-reads every run folder, so it polls less often than a job panel.
TABLE_POLL_SECONDS = 2
PERCENT = st.column_config.NumberColumn(format="percent")
SCORE_COLUMNS = ("best val accuracy", "test accuracy", "seconds")
#: What quick tries vary, shown right after the scores (visible at 1400 px, no scrolling).
HEAD_COLUMNS = ("head LR", "dropout", "hidden units", "head epochs", "head optimizer")


def live_progress(run_id: str) -> str:
    """What this server's worker is doing for the run right now ("" when it is not running it)."""
    job = live_job(run_id)
    if job is None:
        return ""
    return "waiting in the queue" if job.state == JOB_QUEUED else compare.progress_text(job.progress.snapshot())


def runs_table(rows: list[dict]) -> None:
    """The table of runs, re-read and redrawn every few seconds while this server trains one."""
    active = any(live_progress(row["run"]) for row in rows)

    @st.fragment(run_every=TABLE_POLL_SECONDS if active else None)
    def table():
        current = compare.runs_table(runs.list_runs(runs_dir())) if active else rows
        frame = pd.DataFrame(current)
        progress = [live_progress(row["run"]) for row in current]
        if any(progress):
            frame.insert(frame.columns.get_loc("status") + 1, "progress", progress)
        first = [column for column in SCORE_COLUMNS + HEAD_COLUMNS if column in frame.columns]
        after = frame.columns.get_loc("progress" if "progress" in frame.columns else "status") + 1 if "status" in frame.columns else 0
        rest = [column for column in frame.columns if column not in first]
        frame = frame[rest[:after] + first + rest[after:]]
        st.dataframe(frame, hide_index=True, column_config={
            "best val accuracy": PERCENT,
            "test accuracy": PERCENT,
            "head LR": st.column_config.NumberColumn(format="%.1e"),
            "fine-tune LR": st.column_config.NumberColumn(format="%.1e"),
            "seconds": st.column_config.NumberColumn("training time (s)", format="%.1f"),
            "created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
        })
        if active and not any(progress):
            st.rerun()  # the last job ended: redraw the page once, and stop polling

    table()


# --- one run: load, export, delete ----------------------------------------------------

def load_run(run: runs.Run) -> None:
    """Make the run the session's (its settings, followed, in the URL) and say so."""
    load_into_session(run)
    st.session_state["runs_notice"] = f"Run {run.id} is now the session's run: its data, augmentation, model and training settings are loaded."


def format_title(key: str) -> str:
    """An export format's title as plain text (tables and pickers show no markdown)."""
    return export.FORMATS[key].title.replace("`", "")


def parity_table(manifest: dict) -> None:
    """Per export: size, test accuracy, agreement with the Keras model, largest probability
    difference and latency; a warning naming each export below its agreement bound."""
    reference = manifest["reference"]
    rows = [{"file": export.FORMATS[row["format"]].file_name, "size": size_text(row["bytes"]), "bytes": row["bytes"],
             "test accuracy": row.get("test_accuracy"), "agreement": row.get("agreement"),
             "max prob. diff.": row.get("max_probability_difference"), "ms / image": row.get("ms_per_image"),
             "check": "ok" if row["ok"] else ("does not run" if "error" in row else "⚠ below bound"),
             "what": format_title(row["format"])} for row in manifest["parity"]]
    if not rows:  # no test split: sizes only
        rows = [{"file": file["file"], "size": size_text(file["bytes"]), "bytes": file["bytes"],
                 "what": format_title(key)} for key, file in manifest["files"].items()]
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
        "test accuracy": PERCENT, "agreement": PERCENT,
        "max prob. diff.": st.column_config.NumberColumn(format="%.4f"),
        "ms / image": st.column_config.NumberColumn(format="%.2f")})
    if not manifest["parity"]:
        st.warning("The run's data has no test split, so the exports were not checked against the Keras model.",
                   icon=":material/warning:")
        return
    st.caption(f"Each file was run on all {reference['test_images']} test images in the runtime a user loads it "
               f"with (a fresh Python for .keras and the SavedModel, the TFLite interpreter for .tflite). The Keras "
               f"model scores {reference['test_accuracy']:.1%} at {reference['ms_per_image']:.2f} ms per image here. "
               "Agreement: share of images given the same class as the Keras model.")
    for row in manifest["parity"]:
        if "error" in row:
            st.error(f"{row['file']} does not load or predict in its runtime: {row['error']}. Do not ship it; "
                     "use model.keras.", icon=":material/error:")
        elif not row["ok"]:
            precision = export.FORMATS[row["format"]].precision
            st.warning(f"{row['file']} agrees with the Keras model on {row['agreement']:.1%} of the test images, "
                       f"below {row['bound']:.0%}: {parity.MEANING[precision]}", icon=":material/warning:")


def export_panel(run: runs.Run) -> None:
    kinds = [kind for kind in MODEL_KINDS if run.model_path(kind).is_file()]
    if not kinds:
        st.caption("This run has no saved model yet.")
        return
    kind = st.radio("Model", kinds, format_func=MODEL_KINDS.get, horizontal=True, key="runs_export_kind")
    formats = st.multiselect("Formats", list(export.FORMATS), default=list(DEFAULT_EXPORTS), key="runs_export_formats",
                             format_func=lambda key: f"{export.FORMATS[key].file_name}: {format_title(key)}",
                             help="Each file is written, then run on the test split in the runtime it loads "
                                  "with; the TFLite files are converted from a SavedModel.")
    if st.button("Export", key="runs_export", icon=":material/ios_share:", disabled=not formats):
        with st.status(f"Exporting and checking {len(formats)} format(s)...") as status, user_errors():
            packaging.export_run(run, kind, formats, on_step=status.write)
            status.update(label="Exported and checked.", state="complete", expanded=False)
    manifest = packaging.read_manifest(run, kind)  # on disk: deleted or outdated files are never shown
    if manifest is None:
        st.caption("Writes the chosen formats (.keras, a SavedModel, float, dynamic-range and int8 TFLite), "
                   f"labels.txt and MODEL_CARD.md into `{packaging.export_folder(run, kind)}` on the server, then "
                   "runs each file on the test split.")
        return
    parity_table(manifest)
    folder = packaging.export_folder(run, kind)
    st.caption(f"Written to `{folder}` on the server; download them here.")
    names = [file["file"] for file in manifest["files"].values()] + [packaging.LABELS_FILE, packaging.CARD_FILE,
                                                                     packaging.MANIFEST_FILE]
    cols = st.columns(4)
    for index, name in enumerate(names):
        cols[index % 4].download_button(name, data=functools.partial((folder / name).read_bytes), file_name=name,
                            mime="application/octet-stream", key=f"runs_download:{name}", icon=":material/download:")
    st.caption("Every export takes raw RGB pixels in [0, 255] at the run's image size (uint8 for the int8 file) and "
               "returns logits; the backbone's preprocessing is inside the model, which is made of Keras' own "
               "layers only: `keras.saving.load_model(path)` loads it without this project. labels.txt lists the "
               "classes in output order.")


def delete_panel(run: runs.Run) -> None:
    if live_progress(run.id):
        st.caption("This run is queued or training: stop it before deleting it.")
        st.button("Stop this run", key=f"runs_stop:{run.id}", on_click=job_manager().stop, args=(run.id,),
                  icon=":material/stop_circle:")
    confirmed = st.checkbox(f"Yes, delete run {run.id} with its models and history", key=f"runs_delete_confirm:{run.id}")
    if not st.button("Delete run", key=f"runs_delete:{run.id}", disabled=not confirmed, icon=":material/delete:"):
        return
    try:
        runs.delete_run(run)
    except UserError as error:
        show_error(error)
        return
    for key in ("run_id", "head_run_id", "fine_tune_run_id"):
        if st.session_state.get(key) == run.id:
            del st.session_state[key]
    if st.query_params.get(RUN_PARAM) == run.id:
        del st.query_params[RUN_PARAM]
    st.session_state["runs_notice"] = f"Deleted run {run.id}."
    st.rerun()


def manage_run(listed: list[runs.Run]) -> None:
    run = run_picker_ui(listed, key="runs_selected", preferred=st.session_state.get("run_id"))
    load, export_tab, config_tab, delete_tab, data_tab = st.tabs(
        ["Load into session", "Export model", "Config", "Delete", "Data"])
    with load:
        st.caption("Use this run's data, augmentation, model and training settings in the workflow pages, "
                   "e.g. to fine-tune its head further or to evaluate it.")
        st.button("Load into session", key="runs_load", on_click=load_run, args=(run,),
                  icon=":material/input:", disabled=run_status(run) == compare.UNREADABLE)
    with export_tab:
        export_panel(run)
    with config_tab:
        try:
            text = (run.path / runs.CONFIG_FILE).read_text(encoding="utf-8")
        except OSError as error:
            st.error(f"Cannot read {run.path / runs.CONFIG_FILE}: {error.strerror}.")
        else:
            st.download_button("config.json", data=text, file_name="config.json", mime="application/json",
                               key="runs_config_download", icon=":material/download:")
            st.caption("Reproduces the run headless, unchanged: `python -m core train --config config.json`.")
            st.code(text, language="json")
    with delete_tab:
        delete_panel(run)
    with data_tab:
        data_report_panel(run)


def data_report_panel(run: runs.Run) -> None:
    """The data the run was trained and measured on (its `data_report.json`)."""
    report = run.read_json(REPORT_FILE, default=None)
    if not report:
        st.caption("This run has no data report (it was refused before loading, or predates data reports).")
        return
    st.markdown(f"**{report['description']}**")
    st.dataframe(pd.DataFrame(report["counts"]).rename_axis("class"))
    for note in report["notes"]:
        st.warning(note, icon=":material/warning:")
    skipped = report["skipped_by_reason"]
    st.caption(f"Skipped files: {sum(skipped.values())}" + "".join(f" · {n} {reason}" for reason, n in skipped.items()))
    if report["skipped"]:
        st.dataframe(pd.DataFrame(report["skipped"]), hide_index=True)
    if report["duplicates"]:
        st.markdown(f"Validation/test images that duplicate training images: {report['duplicate_count']}")
        st.dataframe(pd.DataFrame(report["duplicates"])[["split", "source", "train_source", "kind"]], hide_index=True)


# --- from scratch vs transfer vs fine-tune ------------------------------------------------

def start_comparison(epochs: int) -> None:
    """Queue the three comparison runs on the session's data, augmentation, model and head settings."""
    base = session_run_config()
    started = {}
    for label, config in workflow.comparison_configs(base, epochs).items():
        run = runs.Run.create(runs_dir(), config)
        job_manager().submit(run, workflow.full_job)
        started[label] = run.id
    st.session_state["comparison_runs"] = started


def comparison_runs() -> dict[str, runs.Run]:
    """The session's comparison runs that still exist, by label."""
    ids = st.session_state.get("comparison_runs") or {}
    return {label: run for label, run_id in ids.items() if (run := open_run(run_id)) is not None}


def comparison_active(compared: dict[str, runs.Run]) -> bool:
    return any(live_progress(run.id) for run in compared.values())


def comparison_status(compared: dict[str, runs.Run]) -> None:
    """The three runs' statuses, redrawn every few seconds while any is queued or running."""
    active = comparison_active(compared)

    @st.fragment(run_every=TABLE_POLL_SECONDS if active else None)
    def panel():
        rows = [{"run": label, "id": run.id, "status": run_status(run), "progress": live_progress(run.id)}
                for label, run in compared.items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True)
        if active and not comparison_active(compared):
            st.rerun()  # all ended: redraw the page once with the results, and stop polling

    panel()


def comparison_results(compared: dict[str, runs.Run]) -> None:
    finished = {label: run for label, run in compared.items() if run_status(run) == runs.FINISHED}
    unfinished = sorted(set(compared) - set(finished))
    if unfinished:
        st.warning(f"Not finished: {', '.join(unfinished)}. See the runs table for why.", icon=":material/warning:")
    if not finished:
        return
    st.plotly_chart(comparison_curves({label: run.history() for label, run in finished.items()}),
                    width="stretch", key="comparison_curves")
    st.dataframe(pd.DataFrame(compare.comparison_table(finished)), hide_index=True, column_config={
        "best val accuracy": PERCENT, "test accuracy": PERCENT,
        "seconds": st.column_config.NumberColumn("training time (s)", format="%.1f"),
        "seconds per epoch": st.column_config.NumberColumn(format="%.2f")})
    st.caption("From scratch trains every weight from random values; transfer trains only the new head on the "
               "frozen pretrained features (the fast path runs the backbone once); fine-tuning then unfreezes the "
               "whole backbone at a 10x lower learning rate.")


def comparison_section() -> None:
    st.subheader("From scratch vs transfer vs fine-tune")
    st.caption("Three runs on the session's current data, augmentation, model and head settings, the same "
               "number of epochs each: random weights trained end to end; the pretrained backbone frozen with a "
               "new head; and that head then fine-tuned with the whole backbone unfrozen at a tenth of the rate.")
    compared = comparison_runs()
    busy = comparison_active(compared)
    cols = st.columns([1, 3], vertical_alignment="bottom")
    epochs = cols[0].number_input("Epochs per phase", 1, 100, 3, key="runs_compare_epochs")
    if cols[1].button("Run the comparison", key="runs_compare_start", disabled=busy, icon=":material/compare:"):
        with user_errors():
            start_comparison(int(epochs))
            st.rerun()
    if compared:
        comparison_status(compared)
        if not busy:
            comparison_results(compared)


st.title("Runs")
st.caption("Every training run on this server, newest first: compare them, continue one, export its model.")
notice = st.session_state.pop("runs_notice", None)
if notice:
    st.success(notice, icon=":material/check_circle:")

listed = runs.list_runs(runs_dir())
rows = compare.runs_table(listed)
if not rows:
    st.info("No runs yet: train a head on the Train head page, or start the comparison below.", icon=":material/info:")
else:
    runs_table(rows)

    st.subheader("Learning curves")
    with_history = [row["run"] for row in rows if row.get("best val accuracy") is not None]
    by_id = {run.id: run for run in listed}
    chosen = st.multiselect("Runs to overlay", with_history, default=with_history[:2],
                            format_func=lambda run_id: run_label(by_id[run_id]), key="runs_curves")
    if chosen:
        histories = {run_label(by_id[run_id]): by_id[run_id].history() for run_id in chosen}
        st.plotly_chart(comparison_curves(histories), width="stretch", key="runs_curves_chart")

    st.subheader("Manage a run")
    manage_run(listed)

comparison_section()
quick_tries.cache_section_ui()
