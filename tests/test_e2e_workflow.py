"""The whole workflow on the built-in dataset, in a real Chromium, as a new user sees it:
Data -> Augmentation -> Model -> Train head -> Fine-tune -> Evaluate -> Runs (export and
download the model). Writes the README tour's screenshots into docs/screenshots/."""
import re
import time

import pytest
from playwright.sync_api import Page, expect

from core.data import demo_data
from core.results.export import load_model_safe
from tests.browser import (  # noqa: F401 (app_server, browser_page and chromium are fixtures)
    app_server,
    assert_no_errors,
    browser_page,
    chromium,
    dataframe_rows,
    fill_number,
    image_captions,
    load_demo_at,
    metric,
    open_page,
    record_timing,
    run_status,
    save_screenshot,
    svg_texts,
    wait_for_chart,
    wait_for_images,
    wait_until_idle,
    watch_progress,
)

IMAGE_SIZE = 96  # the smallest cached MobileNetV2 weights: fast on 2 CPU cores
HEAD_EPOCHS = 2
CUT = 120  # where the Model page's slider is moved to, from the default 125 (MobileNetV2 has 154 layers)


def report_timing(capsys, name: str, label: str, seconds: float) -> None:
    record_timing(name, seconds)
    with capsys.disabled():
        print(f"\n[timing] {label}: {seconds:.1f} s")


def finish_step(page: Page, screenshot: str) -> None:
    """End of a step: the script run is over, nothing failed, the page is in the tour."""
    wait_until_idle(page)
    assert_no_errors(page)
    save_screenshot(page, screenshot)


def walk_data_and_augmentation(page: Page, url: str) -> tuple[float, float]:
    """Data page at IMAGE_SIZE, then Augmentation; (first render s, page switch s)."""
    started = time.perf_counter()
    page.goto(url)
    wait_for_images(page, 9)
    wait_for_chart(page)
    first_render_s = time.perf_counter() - started
    load_demo_at(page, IMAGE_SIZE)
    assert set(image_captions(page)) <= set(demo_data.CLASSES)
    finish_step(page, "data")

    started = time.perf_counter()
    open_page(page, "Augmentation")
    wait_for_images(page, 9, caption_prefix="Random view")
    switch_s = time.perf_counter() - started
    assert [c for c in image_captions(page) if c.startswith("Random view")] == [f"Random view {i}" for i in range(1, 10)]
    finish_step(page, "augmentation")
    return first_render_s, switch_s


def walk_model(page: Page) -> None:
    """The trainable count grows as the unfreeze point moves down the backbone."""
    open_page(page, "Model")
    trainable = metric(page, "Trainable params")
    trainable.wait_for(timeout=120_000)
    frozen = trainable.inner_text()

    page.get_by_test_id("stRadio").filter(has_text="Unfreeze").get_by_text("Unfreeze from layer index").click()
    expect(page.get_by_text(re.compile(r"^Layer 125 is "))).to_be_visible()  # the default cut
    expect(trainable).not_to_have_text(frozen)
    at_default = trainable.inner_text()

    slider = page.get_by_test_id("stSlider").filter(has_text="First trainable layer").get_by_role("slider")
    slider.focus()
    for _ in range(125 - CUT):
        page.keyboard.press("ArrowLeft")
    # each key press reruns the page (the counts are rebuilt): allow for a busy server
    expect(page.get_by_text(re.compile(rf"^Layer {CUT} is "))).to_be_visible(timeout=60_000)
    expect(trainable).not_to_have_text(at_default)
    at_cut = trainable.inner_text()
    counts = [int(text.replace(",", "")) for text in (frozen, at_default, at_cut)]
    assert counts[0] < counts[1] < counts[2], f"trainable params frozen / from 125 / from {CUT}: {counts}"
    finish_step(page, "model")


def walk_train_head(page: Page) -> str:
    """Train the head for HEAD_EPOCHS; the progress advances to "finished", curves and metrics appear."""
    open_page(page, "Train head")
    epochs = page.get_by_test_id("stForm").get_by_label("Epochs", exact=True)
    epochs.fill(str(HEAD_EPOCHS))
    epochs.press("Enter")  # commits the value; only the button starts a run
    wait_until_idle(page)
    expect(run_status(page)).to_have_count(0)
    page.get_by_role("button", name="Start head training").click()
    status = run_status(page, "finished")
    seen = watch_progress(page, lambda: status.count() > 0)
    assert len(seen) >= 2, f"the progress did not advance: {seen}"
    run_id = status.inner_text().split()[1]
    expect(metric(page, "Best validation accuracy")).to_have_text(re.compile(r"^[01]\.\d{3}$"))
    expect(metric(page, "Test accuracy")).to_have_text(re.compile(r"^[01]\.\d{3}$"))
    curves = page.locator(f".st-key-curves-{run_id}")
    wait_for_chart(page)
    assert {"Accuracy", "Loss"} <= set(svg_texts(curves))
    finish_step(page, "train_head")
    return run_id


def walk_fine_tune(page: Page, run_id: str) -> None:
    """Fine-tune one epoch from the Model page's cut; the curves continue past the marker."""
    open_page(page, "Fine-tune")
    expect(page.get_by_text(f"Continuing run {run_id}")).to_be_visible()
    expect(metric(page, "Trainable backbone layers")).to_have_text(f"{154 - CUT} of 154", timeout=60_000)
    form = page.get_by_test_id("stForm")
    form.get_by_text("1/10 of the head's rate").click()
    fill_number(form, "Epochs", 1)
    page.get_by_role("button", name="Start fine-tuning").click()
    tuned = metric(page, "Validation accuracy after fine-tuning")
    watch_progress(page, lambda: tuned.count() > 0)
    curves = page.locator(f".st-key-curves-{run_id}")
    wait_for_chart(page)
    assert "Start fine-tuning" in svg_texts(curves)
    expect(run_status(page, "finished", run_id)).to_be_visible()
    finish_step(page, "fine_tune")


def walk_evaluate(page: Page) -> None:
    """Test accuracy of both models, a confusion matrix over every test image, a gallery."""
    open_page(page, "Evaluate")
    for label in ("Head only: test accuracy", "Fine-tuned: test accuracy"):
        expect(metric(page, label)).to_have_text(re.compile(r"^\d+\.\d%$"), timeout=120_000)
    confusion = page.locator(".st-key-confusion")
    confusion.locator(".main-svg").first.wait_for()
    tested = int(re.search(r"on (\d+) test images", page.get_by_test_id("stMain").inner_text()).group(1))
    cells = [int(text) for text in svg_texts(confusion, "heatmap-label")]
    assert len(cells) == len(demo_data.CLASSES) ** 2 and sum(cells) == tested
    wait_for_images(page, 12, caption_prefix="")
    gallery = [c for c in image_captions(page) if c.startswith(("✅", "❌"))]
    assert len(gallery) >= 12
    finish_step(page, "evaluate")


def walk_runs_and_export(page: Page, run_id: str, tmp_path) -> None:
    """The run is listed as finished; its exported model.keras downloads and loads safely."""
    open_page(page, "Runs")
    table = page.get_by_test_id("stDataFrame").first
    table.wait_for()
    rows = {row["run"]: row for row in dataframe_rows(table)}
    assert rows[run_id]["status"] == "finished"
    page.get_by_role("tab", name="Export model").click()
    page.get_by_role("button", name="Export", exact=True).click()
    download_button = page.get_by_test_id("stDownloadButton").filter(has_text="model.keras").get_by_role("button")
    download_button.wait_for(timeout=180_000)
    finish_step(page, "runs")
    with page.expect_download() as download:
        download_button.click()
    assert download.value.suggested_filename == "model.keras"
    path = tmp_path / "model.keras"
    download.value.save_as(path)
    model = load_model_safe(path)
    assert model.input_shape == (None, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert model.output_shape == (None, len(demo_data.CLASSES))


@pytest.mark.browser
def test_a_new_user_walks_the_whole_workflow(app_server, browser_page, tmp_path, capsys):
    page = browser_page
    started = time.perf_counter()
    first_render_s, switch_s = walk_data_and_augmentation(page, app_server.url)
    walk_model(page)
    run_id = walk_train_head(page)
    walk_fine_tune(page, run_id)
    walk_evaluate(page)
    walk_runs_and_export(page, run_id, tmp_path)
    report_timing(capsys, "e2e_data_first_render_s", "Workflow: Data page first render", first_render_s)
    report_timing(capsys, "e2e_page_switch_s", "Workflow: switch to Augmentation (9 previews)", switch_s)
    report_timing(capsys, "e2e_workflow_s", "Workflow: Data to exported model, in the browser", time.perf_counter() - started)
