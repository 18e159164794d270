"""The dashboard in a real Chromium, from the first page load on: the app shell, the
sidebar, a deep link. (The whole workflow, and the README's screenshots, are in
test_e2e_workflow.py.)"""
import os
import re
import time

import pytest

from core.data import demo_data
from tests.browser import (  # noqa: F401 (app_server, browser_page and chromium are fixtures)
    app_server,
    assert_no_errors,
    browser_page,
    chromium,
    image_captions,
    open_page,
    record_timing,
    start_server,
    stop_server,
    wait_for_chart,
    wait_for_images,
    wait_until_idle,
)

NAV_TITLES = ["Data", "Augmentation", "Model", "Train head", "Fine-tune", "Evaluate", "Label issues", "Runs"]


def nav_titles(page) -> list[str]:
    """The sidebar's page links, without their icon names."""
    return [text.split("\n")[-1] for text in page.locator('[data-testid="stSidebarNavLink"]').all_inner_texts()]


def workflow_done(page) -> list[str]:
    """The workflow steps the sidebar shows as done."""
    text = page.locator('[data-testid="stSidebarUserContent"]').inner_text()
    return re.findall(r"check_circle\s+(.+)", text)


def report_timing(capsys, name: str, label: str, seconds: float) -> None:
    """Print a timing (even without -s) and keep it in docs/screenshots/timings.json."""
    record_timing(name, seconds)
    with capsys.disabled():
        print(f"\n[timing] {label}: {seconds:.1f} s")


@pytest.mark.browser
def test_data_page_then_augmentation_through_the_sidebar(app_server, browser_page, capsys):
    page = browser_page
    started = time.perf_counter()
    page.goto(app_server.url)
    wait_for_images(page, 9)
    wait_for_chart(page)
    data_render_s = time.perf_counter() - started
    wait_until_idle(page)
    assert_no_errors(page)
    assert nav_titles(page) == NAV_TITLES
    captions = image_captions(page)
    assert len(captions) >= 9 and set(captions) <= set(demo_data.CLASSES)
    assert workflow_done(page) == ["Data loaded"]

    started = time.perf_counter()
    open_page(page, "Augmentation")
    wait_for_images(page, 9, caption_prefix="Random view")
    switch_s = time.perf_counter() - started
    wait_until_idle(page)
    assert_no_errors(page)
    assert [c for c in image_captions(page) if c.startswith("Random view")] == [f"Random view {i}" for i in range(1, 10)]
    assert workflow_done(page) == ["Data loaded", "Augmentation previewed"]

    report_timing(capsys, "server_start_s", "Server start (launch to healthy)", app_server.startup_s)
    report_timing(capsys, "data_first_render_s", "Data page first render (demo generated, 9 images, chart)", data_render_s)
    report_timing(capsys, "augmentation_switch_s", "Switch to Augmentation (9 previews)", switch_s)


@pytest.mark.browser
def test_a_deep_link_to_a_fresh_server_gets_the_app_shell(browser_page, tmp_path):
    """A bookmark (or a tab reconnecting after a restart) opens a page before the entry
    point ever ran: the page must still come with its navigation and sidebar."""
    env = dict(os.environ, TL_CACHE_DIR=str(tmp_path / "cache"), TL_RUNS_DIR=str(tmp_path / "runs"))
    server = start_server(env, tmp_path / "streamlit.log")
    try:
        page = browser_page
        page.goto(f"{server.url}/augmentation")
        wait_for_images(page, 9, caption_prefix="Random view")
        wait_until_idle(page)
        assert_no_errors(page)
        assert nav_titles(page) == NAV_TITLES
        assert "Current choices" in page.locator('[data-testid="stSidebarUserContent"]').inner_text()
    finally:
        stop_server(server)
