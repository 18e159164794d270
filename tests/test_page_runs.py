"""AppTest of the Runs page: the runs table, overlaid curves, load into session,
export, delete with confirmation, and the from-scratch / transfer / fine-tune comparison.

One tiny run (3 colour classes at 96 px, head + 1 fine-tune epoch) is trained once for
the session and copied into this module's own runs folder; other runs are made on disk
with the status each test needs.
"""
import dataclasses
import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import config as config_io
from core import workflow
from core.config import AugmentConfig, ModelConfig, RunConfig, TrainConfig
from core.results import export
from core.training import runs
from tests.helpers import COLOURS_RUN_CONFIG

APP = Path(__file__).resolve().parents[1] / "streamlit_app.py"
CONFIG = COLOURS_RUN_CONFIG  # trained once per session (conftest.py's colours_run)
NO_AUGMENTATION = AugmentConfig(flip="none", rotation=0.0)  # the comparison's three runs


@pytest.fixture(scope="module")
def data_root(colour_data_root) -> Path:
    return colour_data_root


@pytest.fixture(scope="module")
def run(colours_run) -> runs.Run:
    """The session's colours run, in a runs folder of this module's own (the tests add runs to it)."""
    return colours_run


def side_run(runs_dir: Path, status: str, name: str) -> runs.Run:
    """An untrained run whose status.json says `status`, owned by this process."""
    run = runs.Run.create(runs_dir, RunConfig(name=name))
    run.set_status(status)
    return run


@pytest.fixture
def page(run, data_root, monkeypatch):
    """Open the Runs page (call again after changing the runs on disk)."""
    monkeypatch.setenv("TL_RUNS_DIR", str(run.path.parent))
    monkeypatch.setenv("TL_DATA_ROOT", str(data_root))

    def open_page(**session) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.session_state["data_config"] = CONFIG.data
        for key, value in session.items():
            at.session_state[key] = value
        at.run()
        at.switch_page("pages/runs.py")
        at.run()
        assert not at.exception
        return at

    return open_page


def table_row(at: AppTest, run_id: str) -> dict:
    table = at.dataframe[0].value
    return table[table["run"] == run_id].iloc[0].to_dict()


def test_table_lists_runs_with_status_scores_and_settings(page, run):
    interrupted = runs.Run.create(run.path.parent, RunConfig(name="crashed"))
    interrupted.write_json(runs.STATUS_FILE, {"status": runs.RUNNING, "pid": 2 ** 22 + 1, "process_token": "gone"})
    try:
        at = page()
        row = table_row(at, run.id)
        history, metrics = run.history(), run.read_json("metrics.json")
        assert row["status"] == runs.FINISHED and row["name"] == "colours"
        assert row["best val accuracy"] == max(record["val_accuracy"] for record in history)
        assert row["test accuracy"] == metrics["fine_tune"]["test_accuracy"]
        assert (row["head epochs"], row["fine-tune epochs"], row["fine-tune LR"]) == (2, 1, 1e-4)
        assert (row["dataset"], row["image size"], row["unfreeze"]) == ("colours", 96, "140")
        assert row["training path"] == "features / features"
        assert row["seconds"] == pytest.approx(metrics["head"]["seconds"] + metrics["fine_tune"]["seconds"])
        assert table_row(at, interrupted.id)["status"] == runs.INTERRUPTED
        assert list(at.dataframe[0].value.columns[:11]) == [  # scores, then what quick tries vary
            "run", "name", "status", "best val accuracy", "test accuracy", "seconds",
            "head LR", "dropout", "hidden units", "head epochs", "head optimizer"]

        curves = json.loads(at.get("plotly_chart")[0].proto.spec)
        assert {trace["name"] for trace in curves["data"]} == {f"colours · {run.id}"}
        assert at.multiselect(key="runs_curves").value == [run.id]
    finally:
        runs.delete_run(interrupted)


def test_load_into_session_sets_the_runs_configs(page, run):
    at = page()
    at.selectbox(key="runs_selected").set_value(run.id)
    at.button(key="runs_load").click().run()
    assert not at.exception
    state = at.session_state
    assert (state["run_id"], state["head_run_id"]) == (run.id, run.id)
    assert state["data_config"] == CONFIG.data and state["augment_config"] == CONFIG.augment
    assert state["model_config"] == CONFIG.model and state["head_config"] == CONFIG.head
    assert state["fine_tune_config"] == CONFIG.fine_tune and state["fine_tune_at"] == "140"
    assert run.id in at.success[0].value


def test_export_writes_the_chosen_formats_with_their_parity_and_deleted_files_are_not_offered(page, run, data_root):
    import shutil

    at = page(run_id=run.id)
    assert not at.get("download_button") or all(b.label == "config.json" for b in at.get("download_button"))
    assert any(str(run.path / "export" / "final") in caption.value for caption in at.caption)  # where it writes
    assert at.multiselect(key="runs_export_formats").value == ["keras", "tflite"]  # the default
    at.multiselect(key="runs_export_formats").select("int8").run()
    at.button(key="runs_export").click().run(timeout=600)  # each format checked in its runtime
    assert not at.exception
    folder = run.path / "export" / "final"
    manifest = json.loads((folder / "manifest.json").read_text())
    table = at.dataframe[1].value.set_index("file")
    assert list(table.index) == ["model.keras", "model_float.tflite", "model_int8.tflite"]
    assert not (folder / "saved_model.zip").exists()  # not chosen, not written
    for row in manifest["parity"]:
        assert (folder / row["file"]).stat().st_size == table.loc[row["file"], "bytes"] > 0
        assert table.loc[row["file"], "agreement"] == pytest.approx(row["agreement"])
        assert table.loc[row["file"], "test accuracy"] == pytest.approx(row["test_accuracy"])
        assert table.loc[row["file"], "check"] == ("ok" if row["ok"] else "⚠ below bound")
    flagged = [row["file"] for row in manifest["parity"] if not row["ok"]]
    warnings = [warning.value for warning in at.warning]
    assert [w.split(" agrees")[0] for w in warnings if " agrees with the Keras model" in w] == flagged
    assert any(f"Written to `{folder}`" in caption.value for caption in at.caption)
    labels = {button.label for button in at.get("download_button")}
    assert set(table.index) | {"labels.txt", "MODEL_CARD.md", "manifest.json", "config.json"} <= labels

    images = workflow.load_data(CONFIG.data, data_root).splits["test"][0][:4].astype("float32")
    keras_logits = export.load_model_safe(run.model_path("final")).predict(images, verbose=0)
    assert export.load_model_safe(folder / "model.keras").predict(images, verbose=0) == pytest.approx(keras_logits, abs=1e-5)
    assert export.tflite_predict(folder / "model_float.tflite", images) == pytest.approx(keras_logits, abs=1e-3)

    assert (folder / "labels.txt").read_text().splitlines() == run.read_json("classes.json")

    # The files are gone: the page must not offer them, and offers the export again. (That an
    # export of a folder whose files were deleted writes them again is test_export_integration's.)
    shutil.rmtree(folder)
    at.run()
    parity_tables = [frame for frame in at.dataframe if "agreement" in frame.value.columns]
    assert not parity_tables and {b.label for b in at.get("download_button")} == {"config.json"}
    assert any(caption.value.startswith("Writes the chosen formats") for caption in at.caption)  # what Export does
    at.multiselect(key="runs_export_formats").set_value([]).run()
    assert at.button(key="runs_export").disabled  # nothing chosen, nothing to export


def wait_for_stop(run: runs.Run, progress) -> None:
    """A job that stays running until it is asked to stop."""
    while not progress.stop_requested:
        time.sleep(0.05)


def test_delete_needs_confirmation_and_refuses_an_active_run(page, run):
    from pages._common import (
        job_manager,  # the server's worker, shared with the app in this process
    )

    finished = side_run(run.path.parent, runs.FINISHED, "old")
    active = side_run(run.path.parent, runs.QUEUED, "busy")
    job = job_manager().submit(active, wait_for_stop)
    while job.state != "running":
        time.sleep(0.05)
    at = page()
    at.selectbox(key="runs_selected").set_value(active.id).run()
    assert at.button(key=f"runs_delete:{active.id}").disabled  # not confirmed yet
    at.checkbox(key=f"runs_delete_confirm:{active.id}").check().run()
    at.button(key=f"runs_delete:{active.id}").click().run()
    assert f"Run {active.id} is running and cannot be deleted." in [error.value for error in at.error]
    assert active.path.is_dir()

    at.button(key=f"runs_stop:{active.id}").click().run()
    assert job_manager().wait(timeout=30) and active.status()["status"] == runs.STOPPED
    at.button(key=f"runs_delete:{active.id}").click().run()
    assert not active.path.exists()

    at.selectbox(key="runs_selected").set_value(finished.id).run()
    at.checkbox(key=f"runs_delete_confirm:{finished.id}").check().run()
    at.button(key=f"runs_delete:{finished.id}").click().run()
    assert not at.exception
    assert not finished.path.exists()
    assert at.success[0].value == f"Deleted run {finished.id}."
    assert finished.id not in at.dataframe[0].value["run"].tolist()


def test_comparison_configs_are_scratch_frozen_and_fine_tuned():
    base = RunConfig(model=ModelConfig(weights="imagenet"), head=TrainConfig(learning_rate=1e-3, epochs=9))
    scratch, frozen, tuned = workflow.comparison_configs(base, 4).values()
    assert (scratch.model.weights, scratch.head.fine_tune_at, scratch.fine_tune) == ("none", "all", None)
    assert (frozen.model.weights, frozen.head.fine_tune_at, frozen.fine_tune) == ("imagenet", None, None)
    assert tuned.head == frozen.head and tuned.model.weights == "imagenet"
    assert (tuned.fine_tune.fine_tune_at, tuned.fine_tune.learning_rate) == ("all", pytest.approx(1e-4))
    assert {config.head.epochs for config in (scratch, frozen, tuned)} == {tuned.fine_tune.epochs} == {4}


def test_comparison_queues_three_runs_and_shows_their_results(page, run):
    from pages._common import (
        job_manager,  # the server's worker, shared with the app in this process
    )

    before = {r.id for r in runs.list_runs(run.path.parent)}
    session = dict(data_config=dataclasses.replace(CONFIG.data, image_size=128), augment_config=NO_AUGMENTATION,
                   model_config=ModelConfig(backbone="MobileNet"), head_config=TrainConfig(views=1))
    at = page(**session)  # MobileNet (alpha 0.25) keeps the three trainings short
    at.number_input(key="runs_compare_epochs").set_value(1)
    at.button(key="runs_compare_start").click().run()
    assert not at.exception
    started = at.session_state["comparison_runs"]
    assert {r.id for r in runs.list_runs(run.path.parent)} - before == set(started.values())
    base = RunConfig(data=session["data_config"], augment=NO_AUGMENTATION, model=session["model_config"],
                     head=session["head_config"], seed=CONFIG.data.seed)
    expected = workflow.comparison_configs(base, 1)
    for label, run_id in started.items():
        assert config_io.loads((run.path.parent / run_id / runs.CONFIG_FILE).read_text()) == expected[label]

    assert job_manager().wait(timeout=240)
    at.run()
    assert not at.exception
    results = at.dataframe[-1].value
    assert results["run"].tolist() == list(expected)
    assert results["epochs"].tolist() == [1, 1, 2]
    assert results["test accuracy"].notna().all()
    curves = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert {trace["name"] for trace in curves["data"]} == set(expected)
