"""Browser-test helpers: the app server, a headless Chromium page, error checks, screenshots.

The server is started the way the README says (`streamlit run streamlit_app.py`),
on a free port, with temp cache and runs folders; the page is Debian's Chromium
driven by Playwright (which cannot download its own browsers here).

Use the fixtures from a test module with
`from tests.browser import app_server, browser_page, chromium  # noqa: F401 (fixtures)`.
Imported fixtures belong to the importing module, so the server and the browser are
module-scoped: each module starts and stops its own (Playwright's sync API allows one
running instance at a time).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "docs" / "screenshots"
TIMINGS = SCREENSHOTS / "timings.json"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 1000}
SERVER_START_TIMEOUT_S = 60
#: Streamlit's marks for an uncaught exception and for an st.error box.
ERROR_SELECTORS = ('[data-testid="stException"]', '[data-testid="stAlertContentError"]')


@dataclass
class AppServer:
    """A running `streamlit run` process and where to reach it."""

    url: str
    process: subprocess.Popen
    log_path: Path
    startup_s: float  # from launch until /_stcore/health answers

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], log_path: Path) -> AppServer:
    """Run `streamlit run streamlit_app.py` in its own process group; wait until it is healthy."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "streamlit"), "run", "streamlit_app.py", "--server.port", str(port)]
    started = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = AppServer(f"http://127.0.0.1:{port}", process, log_path, startup_s=0.0)
    try:
        wait_healthy(server)
    except BaseException:
        stop_server(server)
        raise
    server.startup_s = time.perf_counter() - started
    return server


def wait_healthy(server: AppServer, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"streamlit exited with code {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"streamlit did not answer /_stcore/health within {timeout_s:.0f} s:\n{server.log_tail()}")


def stop_server(server: AppServer) -> None:
    """Stop the server and everything it started (its whole process group)."""
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory) -> AppServer:
    """The dashboard served on a free port, with fresh cache and runs folders
    (so the first page load includes generating the demo dataset)."""
    tmp = tmp_path_factory.mktemp("app-server")
    env = dict(os.environ, TL_CACHE_DIR=str(tmp / "cache"), TL_RUNS_DIR=str(tmp / "runs"))
    assert "KERAS_HOME" in env, "tests/conftest.py sets KERAS_HOME before the server starts"
    server = start_server(env, tmp / "streamlit.log")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One cache folder (generated demo, extracted uploads) for the servers tests start themselves."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture
def start_app_server(tmp_path, shared_cache):
    """Start more dashboards for one test: `start_app_server(runs_dir=None, cache_dir=None, **env)`
    (runs default to <tmp_path>/runs, cache to `shared_cache`); all are stopped afterwards."""
    servers: list[AppServer] = []

    def start(runs_dir: Path | None = None, cache_dir: Path | None = None, **env: str) -> AppServer:
        environment = dict(os.environ, TL_CACHE_DIR=str(cache_dir or shared_cache),
                           TL_RUNS_DIR=str(runs_dir or tmp_path / "runs"), **env)
        server = start_server(environment, tmp_path / f"streamlit-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        stop_server(server)


def kill_server(server: AppServer) -> None:
    """SIGKILL the server and everything it started, as a crash or an OOM kill would."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()


@pytest.fixture(scope="module")
def chromium() -> Browser:
    """Debian's Chromium, headless."""
    if not CHROMIUM.is_file():
        pytest.fail(f"Browser tests need Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium: Browser) -> Page:
    """A page in a fresh browser context (so a new Streamlit session)."""
    context = chromium.new_context(viewport=VIEWPORT)
    yield context.new_page()
    context.close()


def assert_no_errors(page: Page) -> None:
    """Fail on any Streamlit exception or error box in the page, quoting its text."""
    for selector in ERROR_SELECTORS:
        boxes = page.locator(selector)
        if boxes.count():
            pytest.fail(f"{page.url} shows {selector}: {boxes.first.inner_text()}")


def wait_for_images(page: Page, count: int, caption_prefix: str = "", timeout_s: float = 60) -> None:
    """Wait until at least `count` st.image pictures (whose caption starts with
    `caption_prefix`) have really loaded: complete, with a natural width."""
    page.wait_for_function(
        """([count, prefix]) => [...document.querySelectorAll('[data-testid="stImage"]')].filter(image => {
               const img = image.querySelector('img');
               const caption = image.querySelector('[data-testid="stImageCaption"]');
               return img && img.complete && img.naturalWidth > 0
                   && (caption ? caption.innerText : '').startsWith(prefix);
           }).length >= count""",
        arg=[count, caption_prefix],
        timeout=timeout_s * 1000,
    )


def image_captions(page: Page) -> list[str]:
    return page.locator('[data-testid="stImage"] [data-testid="stImageCaption"]').all_inner_texts()


def wait_for_chart(page: Page, timeout_s: float = 30) -> None:
    """Wait until a Plotly chart has drawn its SVG."""
    page.locator('[data-testid="stPlotlyChart"] .main-svg').first.wait_for(timeout=timeout_s * 1000)


def wait_until_idle(page: Page, timeout_s: float = 60) -> None:
    """Wait until the script run has finished: Streamlit's running indicator is gone and
    no element is still shown faded from the previous run."""
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout_s * 1000)
    page.wait_for_function("""() => !document.querySelector('[data-stale="true"]')""", timeout=timeout_s * 1000)


def open_page(page: Page, title: str) -> None:
    """Click the sidebar navigation link called `title` and wait for that page's heading."""
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
    page.locator("h1", has_text=title).wait_for()


def choose_option(page: Page, label: str, option: str) -> None:
    """Pick `option` in the st.selectbox labelled `label`."""
    select = page.get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True))
    select.get_by_role("combobox").click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(select.get_by_role("combobox")).to_have_value(option)


def fill_number(scope: Page | Locator, label: str, value: int) -> None:
    """Type `value` into the st.number_input labelled `label`, committing it as a user does (Tab)."""
    field = scope.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Tab")


def metric(page: Page, label: str) -> Locator:
    """The value of the st.metric labelled exactly `label`."""
    label_element = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return page.get_by_test_id("stMetric").filter(has=label_element).get_by_test_id("stMetricValue")


def load_demo_at(page: Page, image_size: int, timeout_s: float = 60) -> None:
    """On the Data page: choose the image size, press "Load dataset", wait until the sidebar shows it."""
    choose_option(page, "Image size (px)", str(image_size))
    page.get_by_role("button", name="Load dataset").click()
    sidebar = page.get_by_test_id("stSidebarUserContent")
    expect(sidebar).to_contain_text(f"Image size: {image_size} px", timeout=timeout_s * 1000)
    wait_for_images(page, 9, timeout_s=timeout_s)


def run_status(page: Page, status: str = r"\w+", run_id: str = r"\S+") -> Locator:
    """The job panel's "Run <id> — <status>" line (both are regular expressions)."""
    return page.get_by_text(re.compile(rf"^Run {run_id} — {status}$"))


def progress_texts(page: Page) -> str:
    """What the job panel's progress bars say now ("" when it shows none)."""
    return " | ".join(page.get_by_test_id("stProgress").all_inner_texts())


def watch_progress(page: Page, done, timeout_s: float = 180) -> list[str]:
    """Poll the job panel until `done()` is true; the distinct progress texts seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"the job did not get there within {timeout_s:.0f} s; progress seen: {seen}"
        text = progress_texts(page)
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        page.wait_for_timeout(200)
    return seen


def dataframe_rows(frame: Locator) -> list[dict[str, str]]:
    """The rows an st.dataframe draws, read from the accessible table behind its canvas
    (the columns it currently shows)."""
    frame.locator('table[role="grid"] tbody tr').first.wait_for(state="attached")
    return frame.evaluate("""frame => {
        const table = frame.querySelector('table[role="grid"]');
        const headers = [...table.querySelectorAll('th')].map(cell => cell.textContent);
        return [...table.querySelectorAll('tbody tr')].map(row => Object.fromEntries(
            [...row.querySelectorAll('td')].map((cell, i) => [headers[i], cell.textContent])));
    }""")


def svg_texts(chart: Locator, css_class: str = "") -> list[str]:
    """The text drawn in a Plotly chart's SVG (optionally only that of elements whose
    parent has `css_class`, e.g. "heatmap-label")."""
    return chart.evaluate("""(chart, cls) => [...chart.querySelectorAll('svg text')]
        .filter(text => !cls || text.parentElement.classList.contains(cls))
        .map(text => text.textContent)""", css_class)


def save_screenshot(page: Page, name: str) -> Path:
    """Save the whole page (not only the viewport) as docs/screenshots/<name>.png.

    Streamlit scrolls inside its main section, so the viewport is stretched to
    that section's height for the shot.
    """
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    size = page.viewport_size
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
    try:
        page.screenshot(path=path, full_page=True, animations="disabled")
    finally:
        page.set_viewport_size(size)
    return path


def record_timing(name: str, seconds: float) -> None:
    """Add one measurement (seconds) to docs/screenshots/timings.json, keeping the others."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {}
    timings[name] = round(seconds, 2)
    TIMINGS.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
