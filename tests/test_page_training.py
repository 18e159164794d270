"""AppTests of the Train head and Fine-tune pages, with real jobs on the built-in demo data.

Jobs run on the server's one background worker: `pages._common.job_manager()` is an
`st.cache_resource` singleton, so the test process holds the very worker the pages use.
AppTest does not drive `st.fragment(run_every=...)` timers: tests wait on the worker
and rerun the app to see a job's new state.
"""
import base64
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core import config as config_io
from core import settings, workflow
from core.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from core.model.build import count_params
from core.model.classifier import Classifier
from core.training import runs
from pages._common import job_manager

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
JOB_TIMEOUT = 300
SESSION = {
    "data_config": DataConfig(image_size=96, batch_size=32),
    "augment_config": AugmentConfig(flip="horizontal", rotation=0.05),
    "model_config": ModelConfig(dropout=0.1),
    "head_config": TrainConfig(optimizer="adam", learning_rate=1e-3, epochs=2, views=1),
}


def open_page(page: str, **session) -> AppTest:
    """A new browser session: the app's first run with `session` (over SESSION), then `page`."""
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in {**SESSION, **session}.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception
    return at


def by_label(elements, label: str):
    return next(element for element in elements if element.label == label)


def start_head_training(at: AppTest) -> runs.Run:
    """Press Start on the Train head page; the run the session now follows."""
    by_label(at.button, "Start head training").click().run()
    assert not at.exception
    run_id = at.session_state["run_id"]
    assert job_manager().get(run_id) is not None, "the page submitted to another JobManager"
    return runs.Run(settings.runs_dir() / run_id)


def finish_jobs(*sessions: AppTest) -> None:
    """Wait for the worker to be idle, then rerun each session to draw the end state."""
    assert job_manager().wait(timeout=JOB_TIMEOUT)
    for at in sessions:
        at.run()
        assert not at.exception


def wait_until(condition, timeout: float = 120) -> None:
    """Poll `condition` (a job's progress, seen from the test) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def panel_status(at: AppTest, run_id: str) -> str:
    """The status the job panel shows for `run_id`."""
    line = next(m.value for m in at.markdown if m.value.startswith(f"**Run** `{run_id}`"))
    return line.rsplit("**", 2)[-2]


def metric(at: AppTest, label: str) -> str:
    return by_label(at.metric, label).value


def figure(at: AppTest) -> dict:
    return json.loads(at.get("plotly_chart")[-1].proto.spec)


def plotted(array) -> list:
    """Values of a plotly figure array (plain JSON, or base64 typed)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), array["dtype"]).tolist()
    return list(array)


def run_folders() -> list[runs.Run]:
    return runs.list_runs(settings.runs_dir())


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TL_RUNS_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def trained_head(tmp_path_factory):
    """The Train head page after one 2-epoch head training finished (session, run)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TL_RUNS_DIR", str(tmp_path_factory.mktemp("runs")))
        at = open_page("pages/train_head.py")
        run = start_head_training(at)
        finish_jobs(at)
        yield at, run


def test_head_training_runs_the_sessions_configs_and_shows_its_metrics(trained_head):
    at, run = trained_head
    assert [r.id for r in runs.list_runs(run.path.parent)] == [run.id]
    config = run.config
    assert (config.data, config.augment, config.model) == (
        SESSION["data_config"], SESSION["augment_config"], SESSION["model_config"])
    assert config.head == SESSION["head_config"]  # the preset Adam 1e-3 equals the session's choice
    assert run.status()["status"] == runs.FINISHED
    assert [(r["phase"], r["epoch"]) for r in run.history()] == [("head", 1), ("head", 2)]

    metrics = run.read_json("metrics.json")
    assert metric(at, "Validation accuracy before training") == f"{metrics['initial']['accuracy']:.3f}"
    assert metric(at, "Best validation accuracy") == f"{metrics['head']['val_accuracy']:.3f}"
    assert metric(at, "Test accuracy") == f"{metrics['head']['test_accuracy']:.3f}"
    assert metric(at, "Training path") == "features"
    assert panel_status(at, run.id) == runs.FINISHED
    curves = {(trace["name"], trace["xaxis"]): trace for trace in figure(at)["data"]}  # x: accuracy, x2: loss
    validation_accuracy = curves["validation", "x"]
    assert plotted(validation_accuracy["x"]) == [1, 2]
    assert plotted(validation_accuracy["y"]) == pytest.approx([r["val_accuracy"] for r in run.history()])
    assert plotted(curves["train", "x2"]["y"]) == pytest.approx([r["loss"] for r in run.history()])
    assert at.session_state["head_run_id"] == run.id
    assert not at.error


def reopen(page: str, run_id: str, sidebar: list | None = None) -> AppTest:
    """A reload, a bookmark or a shared link: a new session whose URL names the run.
    The first page's sidebar captions go to `sidebar` (AppTest loses the sidebar after
    a page switch)."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = run_id
    at.run()
    if sidebar is not None:
        sidebar.extend(caption.value for caption in at.sidebar.caption)
    at.switch_page(page).run()
    assert not at.exception
    return at


def test_sessions_see_only_their_own_runs_and_a_url_reopens_one_with_its_settings(runs_dir):
    long_job = TrainConfig(epochs=30, fast_path=False, views=1)
    first = open_page("pages/train_head.py", head_config=long_job)
    run = start_head_training(first)
    assert first.query_params["run"] == run.id, "the followed run is in the URL"
    wait_until(lambda: len(run.history()) >= 1)  # an epoch is done: stopping keeps it

    other_first_page = AppTest.from_file(APP, default_timeout=120).run()  # another browser
    other = open_page("pages/train_head.py", head_config=TrainConfig(epochs=3))
    assert not [m for m in other.markdown if m.value.startswith("**Run**")], "it shows someone else's run"
    assert "run_id" not in other.session_state
    assert "Stop" not in [button.label for button in other.button]
    line = next(c.value for c in other_first_page.sidebar.caption if "training" in c.value)
    assert run.id not in line and line.startswith(("None of your runs is training", "Nothing is training")), line

    sidebar = []
    reloaded = reopen("pages/train_head.py", run.id, sidebar)  # same URL, new session, nothing in its state
    assert panel_status(reloaded, run.id) == runs.RUNNING
    assert reloaded.session_state["run_id"] == reloaded.session_state["head_run_id"] == run.id
    assert reloaded.session_state["head_config"] == long_job
    assert reloaded.session_state["data_config"] == SESSION["data_config"]
    assert f"Run `{run.id}` is running." in sidebar
    by_label(reloaded.button, "Stop").click().run()
    assert not reloaded.exception
    finish_jobs(reloaded)

    assert panel_status(reloaded, run.id) == runs.STOPPED
    assert run.status()["status"] == runs.STOPPED
    epochs = len(run.history())
    assert 1 <= epochs < long_job.epochs
    assert f"Stopped after epoch {epochs}; best weights kept." in [info.value for info in reloaded.info]
    assert run.read_json("metrics.json")["head"]["stopped"] is True
    assert "Stop" not in [button.label for button in reloaded.button]
    assert [r.id for r in run_folders()] == [run.id]


def test_a_link_to_a_run_that_does_not_exist_opens_the_page_without_it(runs_dir):
    at = reopen("pages/train_head.py", "20990101-000000-gone-000000")
    assert "run_id" not in at.session_state
    assert not at.error and not [m for m in at.markdown if m.value.startswith("**Run**")]


def test_a_second_session_queues_behind_the_running_job(runs_dir):
    first = open_page("pages/train_head.py", head_config=TrainConfig(epochs=2, fast_path=False, views=1))
    first_run = start_head_training(first)
    wait_until(lambda: job_manager().current() is not None and job_manager().current().run_id == first_run.id)

    second = open_page("pages/train_head.py", head_config=TrainConfig(epochs=1, views=1))
    second_run = start_head_training(second)
    assert first_run.status()["status"] == runs.RUNNING, "the first job ended too soon to test the queue"
    assert panel_status(second, second_run.id) == runs.QUEUED
    queued = next(info.value for info in second.info if info.value.startswith("Queued"))
    assert queued.startswith("Queued: number 1 in line")
    assert f"now running: {first_run.id}" in queued

    finish_jobs(first, second)
    assert first_run.status()["status"] == second_run.status()["status"] == runs.FINISHED
    assert [r["epoch"] for r in first_run.history()] == [1, 2]
    assert [r["epoch"] for r in second_run.history()] == [1]
    assert {r.id for r in run_folders()} == {first_run.id, second_run.id}
    for at, run in ((first, first_run), (second, second_run)):
        shown = metric(at, "Best validation accuracy")
        assert shown == f"{run.read_json('metrics.json')['head']['val_accuracy']:.3f}"


def test_fine_tune_without_a_trained_head_warns(runs_dir):
    at = open_page("pages/fine_tune.py")
    assert "Train the head first" in at.warning[0].value
    assert not at.metric and not at.error


def test_fine_tuning_continues_the_head_run(trained_head, runs_dir):
    head_run = trained_head[1]
    run = runs.Run(shutil.copytree(head_run.path, runs_dir / head_run.id))  # the other tests keep theirs as it is
    fine_tune = TrainConfig(epochs=1, learning_rate=1e-4, fine_tune_at="100", views=1)
    at = open_page("pages/fine_tune.py", head_run_id=run.id, fine_tune_config=fine_tune)
    assert at.radio(key="fine_tune_unfreeze").value == "index"
    assert by_label(at.radio, "Learning rate preset").value == "1/10 of the head's rate"  # the head ran at 1e-3
    assert at.slider(key="fine_tune_unfreeze_index:MobileNetV2").value == 100
    model, _ = workflow.load_run_model(run, "head")
    Classifier.from_keras(model).freeze("100")
    expected = count_params(model)
    assert metric(at, "Trainable parameters") == f"{expected['trainable_params']:,}"
    assert metric(at, "Non-trainable parameters") == f"{expected['non_trainable_params']:,}"

    by_label(at.button, "Start fine-tuning").click().run()
    assert not at.exception
    assert at.session_state["fine_tune_run_id"] == run.id
    finish_jobs(at)

    assert run.status()["status"] == runs.FINISHED
    assert runs.Run(run.path).config.fine_tune == fine_tune  # written to config.json before the job
    assert [(r["phase"], r["epoch"]) for r in run.history()] == [("head", 1), ("head", 2), ("fine_tune", 3)]
    layout = figure(at)["layout"]
    assert [shape["x0"] for shape in layout["shapes"]] == [2.5, 2.5]  # after the last head epoch, in both facets
    assert "Start fine-tuning" in [annotation["text"] for annotation in layout["annotations"]]
    tuned = run.read_json("metrics.json")["fine_tune"]
    assert metric(at, "Validation accuracy after fine-tuning") == f"{tuned['val_accuracy']:.3f}"
    assert metric(at, "Test accuracy after fine-tuning") == f"{tuned['test_accuracy']:.3f}"


def test_fine_tuning_starts_at_a_tenth_of_the_heads_rate_whatever_it_was(trained_head, runs_dir):
    head_run = trained_head[1]
    run = runs.Run(shutil.copytree(head_run.path, runs_dir / head_run.id))
    slow_head = dataclasses.replace(run.config.head, learning_rate=1e-4)  # the TF tutorial's preset
    (run.path / runs.CONFIG_FILE).write_text(config_io.dumps(dataclasses.replace(run.config, head=slow_head)))
    at = open_page("pages/fine_tune.py", head_run_id=run.id)
    assert by_label(at.radio, "Learning rate preset").value == "Adam 1e-5 (Keras guide)"  # also 1/10 of the head's
    tune = at.session_state["fine_tune_config"]
    assert (tune.optimizer, tune.learning_rate) == ("adam", pytest.approx(1e-5))
    assert not [w.value for w in at.warning if "close to the head's" in w.value]  # no warning against its own default


def test_a_diverging_learning_rate_fails_the_run_with_an_error_box(runs_dir):
    at = open_page("pages/train_head.py", head_config=TrainConfig(epochs=2, views=1))
    by_label(at.radio, "Learning rate preset").set_value("Custom")
    by_label(at.selectbox, "Optimizer").set_value("sgd")
    by_label(at.number_input, "Learning rate (Custom)").set_value(1e38)
    run = start_head_training(at)
    assert (run.config.head.optimizer, run.config.head.learning_rate) == ("sgd", 1e38)
    finish_jobs(at)

    assert not at.exception
    assert run.status()["status"] == runs.FAILED
    assert panel_status(at, run.id) == runs.FAILED
    assert "the loss became NaN" in at.error[0].value
    assert any("Lower the learning rate" in info.value for info in at.info)
    assert not at.metric, "a failed run has no trained head to report"


def test_the_fine_tune_page_offers_the_sessions_latest_head_run_and_names_changed_settings(trained_head, runs_dir):
    head_run = trained_head[1]
    older, latest = (runs.Run(shutil.copytree(head_run.path, runs_dir / f"2000010{n}-000000-copy-00000{n}"))
                     for n in (1, 2))
    newest_elsewhere = runs.Run(shutil.copytree(head_run.path, runs_dir / "20990101-000000-other-000000"))
    assert runs.list_runs(runs_dir)[0] == newest_elsewhere  # another session's, newer than the session's own

    at = open_page("pages/fine_tune.py", head_run_id=latest.id,
                   data_config=dataclasses.replace(SESSION["data_config"], image_size=128))
    picker = by_label(at.selectbox, "Head run to continue")
    assert picker.value == latest.id
    assert {option.split()[0] for option in picker.options} >= {older.id, latest.id, newest_elsewhere.id}
    assert any(f"Continuing run `{latest.id}`" in m.value for m in at.markdown)
    assert any("image size 96 px (now 128 px)" in info.value for info in at.info)

    picker.set_value(older.id).run()
    assert any(f"Continuing run `{older.id}`" in m.value for m in at.markdown)


def test_settings_loaded_from_a_run_keep_their_rate_and_fit_the_form(runs_dir):
    """A run made with the CLI can hold values the form's widgets do not offer."""
    loaded = TrainConfig(optimizer="sgd", learning_rate=2.0, epochs=500, views=12)
    at = open_page("pages/train_head.py", head_config=loaded)
    assert by_label(at.radio, "Learning rate preset").value == "Custom"
    head = at.session_state["head_config"]
    assert (head.optimizer, head.learning_rate, head.epochs, head.views) == ("sgd", 2.0, 200, 8)

    tutorial = open_page("pages/train_head.py", head_config=TrainConfig(learning_rate=1e-4))
    assert by_label(tutorial.radio, "Learning rate preset").value == "Adam 1e-4 (TF tutorial)"


def test_a_link_to_a_trained_run_ticks_the_steps_before_training_in_the_sidebar(runs_dir):
    def ticked(run_id: str) -> list[str]:
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params["run"] = run_id  # a reload: a new session that never opened the Augmentation page
        at.run()
        return [m.value for m in at.sidebar.markdown if m.value.startswith(":material/check_circle:")]

    run = runs.Run.create(runs_dir, RunConfig(data=DataConfig(image_size=96)))
    assert not any("Augmentation previewed" in tick for tick in ticked(run.id))
    run.write_json("metrics.json", {"head": {"val_accuracy": 0.9}})  # the run has trained its head
    after = ticked(run.id)
    assert any("Head trained" in tick for tick in after)
    assert any("Augmentation previewed" in tick for tick in after), "a trained run had its augmentation chosen"


def test_a_change_that_shows_as_zero_gets_no_green_arrow():
    from pages._common import metric_delta

    flat = metric_delta(0.0004, "+.3f", " vs head")  # shows as +0.000
    assert flat == {"delta": "+0.000 vs head", "delta_color": "off", "delta_arrow": "off"}
    assert metric_delta(-0.0004, "+.3f")["delta_arrow"] == "off"
    assert metric_delta(0.012, "+.3f", " vs head") == {"delta": "+0.012 vs head", "delta_color": "normal",
                                                       "delta_arrow": "auto"}
    assert metric_delta(-0.05, "+.4f", color="inverse")["delta_color"] == "inverse"
