"""Faults a real deployment meets, in the browser: two users training at once, a reload
during training, the server killed mid-run, and a runs folder that cannot be written."""
import json
import re
import time

import pytest
from playwright.sync_api import Browser, Page, expect

from core.data import demo_data
from core.results.export import load_model_safe
from core.training import runs
from tests.browser import (  # noqa: F401 (chromium, shared_cache and start_app_server are fixtures)
    VIEWPORT,
    assert_no_errors,
    chromium,
    dataframe_rows,
    fill_number,
    kill_server,
    load_demo_at,
    open_page,
    progress_texts,
    run_status,
    shared_cache,
    start_app_server,
    wait_for_images,
    watch_progress,
)

IMAGE_SIZE = 96
JOB_TIMEOUT_S = 180


@pytest.fixture
def new_session(chromium: Browser):
    """Open a new browser (its own context, so its own Streamlit session) on the Data page,
    with the demo loaded at `image_size`: `new_session(url, image_size=96)`."""
    contexts = []

    def open_session(url: str, image_size: int | None = IMAGE_SIZE) -> Page:
        contexts.append(chromium.new_context(viewport=VIEWPORT))
        page = contexts[-1].new_page()
        page.goto(url)
        wait_for_images(page, 9)
        if image_size is not None:
            load_demo_at(page, image_size)
        return page

    yield open_session
    for context in contexts:
        context.close()


def set_head_form(page: Page, epochs: int, fast_path: bool = True) -> None:
    open_page(page, "Train head")
    form = page.get_by_test_id("stForm")
    fill_number(form, "Epochs", epochs)
    form.get_by_role("checkbox", name="Fast path (cached features)").set_checked(fast_path, force=True)


def shown_run_id(page: Page, status: str) -> str:
    """The id in the job panel's "Run <id> — <status>" line, once it shows that status."""
    line = run_status(page, status)
    line.wait_for(timeout=JOB_TIMEOUT_S * 1000)
    return line.inner_text().split()[1]


def one_running_one_queued(pages: list[Page], timeout_s: float = 180) -> tuple[Page, Page]:
    """Wait until one page shows its run running while the other shows its run queued
    (a run just submitted may show "queued" for a moment before the worker takes it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        running = [page for page in pages if run_status(page, "running").count()]
        waiting = [page for page in pages if run_status(page, "queued").count()
                   and page.get_by_text(re.compile(r"^Queued: number 1 in line")).count()]
        if len(running) == len(waiting) == 1 and running != waiting:
            return running[0], waiting[0]
        assert time.monotonic() < deadline, "the two sessions never showed one run running and one queued"
        time.sleep(0.2)


def history_phases(run: runs.Run) -> list[tuple[str, int]]:
    return [(record["phase"], record["epoch"]) for record in run.history()]


@pytest.mark.browser
def test_two_sessions_training_at_once_queue_and_keep_their_runs_apart(new_session, start_app_server, tmp_path):
    server = start_app_server()
    epochs = {new_session(server.url): epochs for epochs in (2, 1)}  # different configs
    for page, count in epochs.items():
        set_head_form(page, epochs=count)
    for page in epochs:
        page.get_by_role("button", name="Start head training").click()

    running, waiting = one_running_one_queued(list(epochs))
    ids = {running: shown_run_id(running, "running"), waiting: shown_run_id(waiting, "queued")}
    assert ids[running] != ids[waiting]
    for page in (running, waiting):
        assert shown_run_id(page, "finished") == ids[page]
        assert_no_errors(page)

    done = {page: runs.Run(tmp_path / "runs" / run_id) for page, run_id in ids.items()}
    for page, run in done.items():
        assert run.config.head.epochs == epochs[page]
        assert history_phases(run) == [("head", epoch) for epoch in range(1, epochs[page] + 1)]
    assert done[waiting].status()["started"] >= done[running].status()["finished"], "the queued run started early"


@pytest.mark.browser
def test_a_reload_during_training_reattaches_to_the_live_job_and_can_stop_it(new_session, start_app_server, tmp_path):
    server = start_app_server()
    page = new_session(server.url)
    set_head_form(page, epochs=50, fast_path=False)  # the full model every epoch: a long job
    page.get_by_role("button", name="Start head training").click()
    run_id = shown_run_id(page, "running")
    watch_progress(page, lambda: "training: batch" in progress_texts(page), JOB_TIMEOUT_S)

    page.reload()
    page.locator("h1", has_text="Train head").wait_for()
    expect(run_status(page, "running", run_id)).to_be_visible(timeout=30_000)
    seen = watch_progress(page, lambda: len(history_phases(runs.Run(tmp_path / "runs" / run_id))) >= 2, JOB_TIMEOUT_S)
    assert len(seen) >= 2, f"the re-attached page did not follow the progress: {seen}"

    page.get_by_role("button", name="Stop").click()
    expect(run_status(page, "stopped", run_id)).to_be_visible(timeout=JOB_TIMEOUT_S * 1000)
    assert_no_errors(page)
    stopped = runs.Run(tmp_path / "runs" / run_id)
    assert stopped.status()["status"] == runs.STOPPED
    assert stopped.config.head.fast_path is False
    assert 2 <= len(stopped.history()) < 50


@pytest.mark.browser
def test_a_server_killed_while_fine_tuning_leaves_an_interrupted_run_with_its_head_model(
        new_session, start_app_server, tmp_path):
    runs_dir = tmp_path / "runs"
    server = start_app_server(runs_dir=runs_dir)
    page = new_session(server.url)
    set_head_form(page, epochs=1)
    page.get_by_role("button", name="Start head training").click()
    run_id = shown_run_id(page, "finished")
    run = runs.Run(runs_dir / run_id)

    open_page(page, "Fine-tune")
    form = page.get_by_test_id("stForm")
    fill_number(form, "Epochs", 100)
    page.get_by_role("button", name="Start fine-tuning").click()
    watch_progress(page, lambda: ("fine_tune", 2) in history_phases(run), JOB_TIMEOUT_S)
    kill_server(server)
    written = history_phases(run)
    assert written[0] == ("head", 1) and ("fine_tune", 2) in written

    restarted = start_app_server(runs_dir=runs_dir)
    page.goto(f"{restarted.url}/runs")
    table = page.get_by_test_id("stDataFrame").first
    table.wait_for(timeout=60_000)
    assert {row["run"]: row["status"] for row in dataframe_rows(table)} == {run_id: "interrupted"}
    assert_no_errors(page)
    status = json.loads((run.path / runs.STATUS_FILE).read_text())
    assert status["status"] == runs.INTERRUPTED, "the restarted server did not record the interruption"
    assert history_phases(run) == written, "the history written before the crash changed"
    model = load_model_safe(run.model_path("final"))  # the head phase's model: the last good one
    assert model.output_shape == (None, len(demo_data.CLASSES))


@pytest.mark.browser
def test_an_unwritable_runs_folder_shows_an_error_box_and_starts_nothing(new_session, start_app_server, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder's parent should be")
    server = start_app_server(runs_dir=blocker / "runs")
    page = new_session(server.url, image_size=None)
    set_head_form(page, epochs=1)
    page.get_by_role("button", name="Start head training").click()

    error = page.get_by_test_id("stAlertContentError")
    expect(error).to_contain_text(f"Cannot write to the runs folder {blocker / 'runs'}", timeout=30_000)
    hint = page.get_by_test_id("stAlertContentInfo").filter(has_text="Set TL_RUNS_DIR to a writable folder")
    expect(hint).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    expect(run_status(page)).to_have_count(0)
    expect(page.get_by_test_id("stSidebarUserContent")).to_contain_text("Nothing is training on this server.")
    open_page(page, "Runs")
    expect(page.get_by_text("No runs yet")).to_be_visible()
    open_page(page, "Evaluate")
    expect(page.get_by_text("No trained model yet")).to_be_visible()
    assert blocker.read_text() == "a file where the runs folder's parent should be"
