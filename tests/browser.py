"""Browser-test helpers: the app server, a headless Chromium page, error checks, screenshots.

The server is started the way the README says (`streamlit run streamlit_app.py`),
on a free port, with temp cache and runs folders; the page is Debian's Chromium
driven by Playwright (which cannot download its own browsers here).

Use the fixtures from a test module with
`from tests.browser import app_server, browser_page, chromium  # noqa: F401 (fixtures)`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

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


@pytest.fixture(scope="session")
def app_server(tmp_path_factory) -> AppServer:
    """The dashboard served on a free port, with fresh cache and runs folders
    (so the first page load includes generating the demo dataset)."""
    tmp = tmp_path_factory.mktemp("app-server")
    env = dict(os.environ, TL_CACHE_DIR=str(tmp / "cache"), TL_RUNS_DIR=str(tmp / "runs"))
    assert "KERAS_HOME" in env, "tests/conftest.py sets KERAS_HOME before the server starts"
    server = start_server(env, tmp / "streamlit.log")
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
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
    """Wait until the script run has finished (Streamlit's running indicator is gone)."""
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=timeout_s * 1000)


def open_page(page: Page, title: str) -> None:
    """Click the sidebar navigation link called `title` and wait for that page's heading."""
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
    page.locator("h1", has_text=title).wait_for()


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
