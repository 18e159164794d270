"""In a real Chromium: on the Evaluate page, Grad-CAM heatmaps open on the images and a
click on a confusion-matrix cell drills down into that cell, with no error box."""
import re

import pytest
from playwright.sync_api import expect

from tests.browser import (  # noqa: F401 (browser_page, chromium and start_app_server are fixtures)
    assert_no_errors,
    browser_page,
    chromium,
    dataframe_rows,
    open_page,
    shared_cache,
    start_app_server,
    wait_for_chart,
    wait_for_images,
    wait_until_idle,
)
from tests.helpers import train_run
from tests.test_page_evaluate import CONFIG


@pytest.mark.browser
def test_heatmaps_and_a_confusion_cell_drilldown_open_without_an_error(browser_page, start_app_server,
                                                                         colour_data_root, tmp_path):
    run = train_run(CONFIG, tmp_path / "runs", colour_data_root)
    server = start_app_server(runs_dir=run.path.parent, TL_DATA_ROOT=str(colour_data_root))
    page = browser_page
    page.set_default_timeout(120_000)  # evaluating and Grad-CAM run in the server on shared CPUs
    page.goto(server.url)
    wait_until_idle(page, timeout_s=120)
    open_page(page, "Evaluate")
    wait_for_chart(page, timeout_s=120)
    wait_until_idle(page, timeout_s=120)
    assert_no_errors(page)

    heatmap = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text("Grad-CAM heatmap on the images"))
    heatmap.scroll_into_view_if_needed()
    heatmap.get_by_role("combobox").click()
    page.keyboard.type("predicted")
    page.keyboard.press("Enter")
    expect(heatmap.get_by_role("combobox")).to_have_value("predicted class")
    wait_until_idle(page, timeout_s=120)
    wait_for_images(page, 3)
    assert_no_errors(page)

    matrix = page.get_by_test_id("stPlotlyChart").first
    points = matrix.locator(".scatterlayer .points path")
    expect(points).to_have_count(9)
    points.last.click(force=True)  # the cell (red, red): the matrix's last row and column
    cell = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text("Cell (click one on the matrix, or pick it here)"))
    # Wait for the click's rerun to show the cell (it may not have started yet), then for the rerun to end.
    expect(cell.get_by_role("combobox")).to_have_value(re.compile(r"^true red → predicted red \(\d+\)$"),
                                                       timeout=120_000)
    wait_until_idle(page, timeout_s=120)
    assert_no_errors(page)
    count = int(re.search(r"\((\d+)\)$", cell.get_by_role("combobox").input_value()).group(1))
    table = page.get_by_test_id("stDataFrame").filter(has=page.locator("text=test image")).last
    # The table redraws after the selectbox: wait for the cell's rows, not the previous cell's.
    expect(table.locator('table[role="grid"] tbody tr')).to_have_count(count, timeout=60_000)
    assert len(dataframe_rows(table)) == count
    assert_no_errors(page)
