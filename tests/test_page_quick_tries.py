"""AppTests of the quick-tries pieces (pages/_quick_tries.py) where the pages show them:
the "features cached" note and "Try several" on Train head, the learning-rate finder on
Train head and Fine-tune, and the caches' size and Clear button on Runs.

Real jobs on the built-in demo shapes at 128 px with the real MobileNet alpha 0.25
weights; a fresh cache directory for this module, so "not cached" is true at first.
"""
import re
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import settings, workflow
from core.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from core.training import feature_cache, runs, sweep
from core.training.jobs import default_backbone
from pages._common import job_manager, size_text
from pages._quick_tries import CACHED

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
SESSION = {
    "data_config": DataConfig(image_size=128, batch_size=32),
    "augment_config": AugmentConfig(flip="horizontal", rotation=0.05),
    "model_config": ModelConfig(backbone="MobileNet", dropout=0.1),
    "head_config": TrainConfig(optimizer="adam", learning_rate=1e-3, epochs=2, views=1),
}


def new_job_manager() -> None:
    """Close the server's job manager: a worker takes the environment it was spawned with,
    so the next one (and its warm worker) must start after the environment changed."""
    job_manager().close()
    job_manager.clear()


@pytest.fixture(scope="module", autouse=True)
def fresh_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        new_job_manager()
        yield
    new_job_manager()


def open_page(page: str, **session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in {**SESSION, **session}.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def by_label(elements, label: str):
    return next(element for element in elements if element.label == label)


def texts(at: AppTest) -> str:
    return " ".join(element.value for kind in (at.success, at.caption, at.markdown, at.info) for element in kind)


def finish(at: AppTest) -> None:
    assert job_manager().wait(timeout=300)
    at.run()
    assert not at.exception, at.exception


def test_train_head_says_when_features_are_cached_and_the_sweep_ends_in_a_run_to_fine_tune():
    at = open_page("pages/train_head.py")
    assert CACHED not in texts(at) and "Features not cached yet" in texts(at)

    at.number_input(key="sweep_trials").set_value(2)
    by_label(at.button, "Try several").click().run()
    sweep_id = at.session_state["sweep_run_id"]
    finish(at)
    record = runs.Run(settings.runs_dir() / sweep_id).read_json(workflow.SWEEP_FILE)
    assert len(at.dataframe[-1].value) == 2 == len(record["trials"])  # the table
    assert any(f"trained as run `{record['best_run']}`" in element.value for element in at.success)
    assert CACHED in texts(at)  # the sweep stored the features this head run reads

    assert list(at.dataframe[-1].value.columns[:4]) == ["trial", "val_accuracy", "val_loss", "best epoch"]

    link = next(element.proto for element in at.get("page_link") if element.proto.label == "Fine-tune the best trial")
    assert link.page.endswith("fine_tune") and link.query_string == f"run={record['best_run']}"
    opened = AppTest.from_file(APP, default_timeout=120)  # the link opens the run it names
    opened.query_params["run"] = record["best_run"]
    opened.run()
    opened.switch_page("pages/fine_tune.py").run()
    assert not opened.exception and opened.session_state["head_run_id"] == record["best_run"]


def test_a_stopped_sweep_says_so_and_puts_its_best_trial_on_the_form():
    at = open_page("pages/train_head.py")
    at.number_input(key="sweep_trials").set_value(200)
    by_label(at.button, "Try several").click().run()
    sweep_run = runs.Run(settings.runs_dir() / at.session_state["sweep_run_id"])
    deadline = time.monotonic() + 180
    while len(sweep_run.read_json(workflow.SWEEP_FILE, default={}).get("trials", [])) < 2:
        assert time.monotonic() < deadline, "the sweep wrote no two trials in time"
        time.sleep(0.1)
    at.run()
    home = AppTest.from_file(APP, default_timeout=120)  # the session on its first page (AppTest loses the
    home.session_state["sweep_run_id"] = sweep_run.id  # sidebar after a page switch)
    home.session_state["data_config"] = SESSION["data_config"]
    sidebar = [caption.value for caption in home.run().sidebar.caption]
    assert "Your sweep (Try several) is running." in sidebar, sidebar
    bars = [element.proto.text for element in at.get("progress")]
    assert any(re.fullmatch(r"Try several: \d+ of 200 trials done · ETA \d+ s", text) for text in bars), bars
    by_label(at.button, "Stop the sweep").click().run()
    finish(at)

    record = sweep_run.read_json(workflow.SWEEP_FILE)
    assert sweep_run.status()["status"] == runs.STOPPED
    assert 2 <= len(record["trials"]) < 200 and "best_run" not in record
    best = sweep.best_row(record["trials"])
    assert any(f"stopped after {len(record['trials'])} trial(s)" in element.value and "a tie goes to" in element.value
               for element in at.warning)
    assert not any("trained as run" in element.value for element in at.success)

    by_label(at.button, f"Put trial {best['trial']}'s settings on the form").click().run()
    assert not at.exception, at.exception
    head, model = at.session_state["head_config"], at.session_state["model_config"]
    assert head.learning_rate == pytest.approx(best["learning_rate"]) and model.dropout == pytest.approx(best["dropout"])
    assert (head.epochs, head.optimizer, head.class_weights, model.hidden_units) == (
        best["epochs"], best["optimizer"], best["class_weights"], best["hidden_units"])
    assert by_label(at.number_input, "Epochs").value == best["epochs"]


def test_a_new_servers_warm_worker_prebuilds_the_default_backbone():
    new_job_manager()  # as on a server that has run nothing yet
    worker = job_manager().warm_worker()
    assert worker is not None and worker.prebuild == default_backbone() == ("MobileNetV2", 160)


def test_the_learning_rate_finder_sets_the_head_form():
    at = open_page("pages/train_head.py")
    by_label(at.button, "Find the learning rate").click().run()
    finish(at)
    use = next(button for button in at.button if button.label.startswith("Use ") and "on the form" in button.label)
    suggestion = float(use.label.split()[1])
    use.click().run()
    assert not at.exception
    assert at.session_state["head_config"].learning_rate == pytest.approx(suggestion, rel=0.05)
    assert by_label(at.number_input, "Learning rate (Custom)").value == pytest.approx(suggestion, rel=0.05)


def test_the_learning_rate_finder_on_the_fine_tune_page():
    config = RunConfig(data=SESSION["data_config"], augment=SESSION["augment_config"],
                                model=SESSION["model_config"], head=SESSION["head_config"], seed=1337)
    run = runs.Run.create(settings.runs_dir(), config)
    job_manager().submit(run, workflow.head_job)
    assert job_manager().wait(timeout=300)
    at = open_page("pages/fine_tune.py", head_run_id=run.id)
    by_label(at.button, "Find the learning rate").click().run()
    finish(at)
    assert "fine_tune" in runs.Run(run.path).read_json(workflow.LR_FIND_FILE)
    use = next(button for button in at.button if button.label.startswith("Use ") and "on the form" in button.label)
    use.click().run()
    assert at.session_state["fine_tune_config"].learning_rate == pytest.approx(float(use.label.split()[1]), rel=0.05)


def test_runs_page_shows_the_cache_size_and_clears_it():
    at = open_page("pages/runs.py")
    size = feature_cache.store().size_bytes()
    assert size > 0 and by_label(at.metric, "Cached features").value == size_text(size) != "0.0 MB"
    assert by_label(at.metric, "Decoded images").value != "0.0 MB"
    by_label(at.button, "Clear the caches").click().run()
    assert not at.exception
    assert feature_cache.store().size_bytes() == 0
    assert by_label(at.metric, "Cached features").value == "0.0 MB"
