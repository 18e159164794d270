"""Does watching a run slow it? The same head run with and without a page polling it,
and the dashboard's job path against the CLI on the same data.

For each dataset (the built-in demo, and ../shared/datasets/cats_vs_dogs at 160 px with
MobileNetV2 and the real ImageNet weights) it runs, through the dashboard's job queue
(`pages._common.job_manager()`, a worker process per job):

1. the run with nobody watching;
2. the same run while a user watches it: a real dashboard (`streamlit run`) and headless
   Chromium with the Train head page open on the run (`?run=<id>`), its panel polling
   the run folder every second, on the same machine (so their CPU competes with the job);
3. `python -m core train` on the same data and settings.

Every run starts with empty decoded-image and feature caches, so all three do the same work.

It prints the wall time of (1) and (2) with their ratio (target <= 1.1), the head and
fine-tuning stage times of the dashboard's job path and of the CLI (target: within
10 %), and the measured start-up cost of a worker (spawn + importing TensorFlow/Keras),
which a warm worker hides from the user.

    python benchmarks/benchmark_watched.py            # demo and cats vs dogs, head 5 + fine-tune 3 epochs
    python benchmarks/benchmark_watched.py --quick    # demo at 96 px, 1 head epoch, to check it works
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.benchmark_training import DATA as CATS_VS_DOGS
from benchmarks.benchmark_training import use_shared_weights

RATIO_TARGET = 1.1
CLI_TARGET = 0.10


def clear_caches() -> None:
    """Empty the decoded-image and feature caches, so every measured run starts cold (the
    same work each time: decoding, the frozen backbone's pass, training)."""
    from core import settings

    for folder in (settings.image_cache_dir(), settings.feature_cache_dir()):
        shutil.rmtree(folder, ignore_errors=True)


def dashboard_run(config, data_root: Path, runs_dir: Path, watcher: Watcher | None) -> tuple[float, dict]:
    """Wall seconds of one full job through the dashboard's queue, on cold caches, and its
    metrics; with a `watcher`, a browser page follows the run the whole time."""
    from core import workflow
    from core.training import runs
    from pages._common import job_manager

    run = runs.Run.create(runs_dir, config)
    clear_caches()
    job_manager().warm_worker().wait_ready()  # as in a server that has been up a while: a warm worker waits
    if watcher is not None:
        watcher.cpu_seconds()  # start counting the watching processes' CPU from here
    started = time.perf_counter()
    job_manager().submit(run, functools.partial(workflow.full_job, data_root=data_root))
    if watcher is not None:
        watcher.follow(run.id)
    assert job_manager().wait()
    seconds = time.perf_counter() - started
    status = run.status()
    assert status["status"] == runs.FINISHED, run.read_log()
    metrics = run.read_json("metrics.json")
    if watcher is not None:
        metrics["watch_cpu_seconds"] = watcher.cpu_seconds()
        watcher.expect_finished()
    return seconds, metrics


class Watcher:
    """A real dashboard (`streamlit run`, its own process, reading the same runs folder) and
    headless Chromium with the Train head page open on a run (`?run=<id>`), as a user who
    started it and keeps watching; the page's fragment polls the run folder every second."""

    def __init__(self, runs_dir: Path, log: Path):
        from playwright.sync_api import sync_playwright

        from tests.browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, start_server

        self.server = start_server(dict(os.environ, TL_RUNS_DIR=str(runs_dir)), log)
        self.playwright = sync_playwright().start()
        self.browser = self.playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        self.page = self.browser.new_page(viewport=VIEWPORT)
        self.processes = [psutil.Process(self.server.process.pid), psutil.Process(self.playwright_pid())]
        self.counted = [0.0, 0.0]
        self.page.goto(f"{self.server.url}/train_head")
        self.settle()

    def settle(self, quiet_percent: float = 10.0, limit_s: float = 120.0) -> None:
        """Wait until the server's start-up is over (its own warm worker imported TensorFlow),
        as in a server that has been up a while: three quiet seconds in a row."""
        quiet, deadline = 0, time.monotonic() + limit_s
        server = self.processes[0]
        while quiet < 3 and time.monotonic() < deadline:
            tree = [server, *server.children(recursive=True)]
            for process in tree:
                process.cpu_percent(interval=None)  # starts the measurement
            time.sleep(1.0)
            busy = sum(process.cpu_percent(interval=None) for process in tree)
            quiet = quiet + 1 if busy < quiet_percent else 0

    def playwright_pid(self) -> int:
        """The Chromium browser process (the one Playwright launched)."""
        chromium = [child for child in psutil.Process().children(recursive=True) if "chromium" in child.name()]
        return min(chromium, key=lambda process: process.create_time()).pid

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds the server and the browser (each with all its children) used since the last call."""
        totals = []
        for root in self.processes:
            total = 0.0
            for process in [root, *root.children(recursive=True)]:
                try:
                    times = process.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            totals.append(total)
        used = tuple(now - before for now, before in zip(totals, self.counted))
        self.counted = totals
        return used

    def follow(self, run_id: str) -> None:
        self.page.goto(f"{self.server.url}/train_head?run={run_id}")
        self.page.get_by_text(run_id).first.wait_for(timeout=120_000)

    def expect_finished(self) -> None:
        """The page saw the run end: its panel shows the final status."""
        from core.training import runs

        self.page.get_by_text(runs.FINISHED, exact=True).first.wait_for(timeout=60_000)

    def close(self) -> None:
        from tests.browser import stop_server

        self.browser.close()
        self.playwright.stop()
        stop_server(self.server)


def cli_run(config, data_dir: Path, runs_dir: Path) -> dict:
    """The CLI's result JSON for the same settings, on cold caches."""
    clear_caches()
    config_file = runs_dir / "cli-config.json"
    from core import config as config_io

    config_file.write_text(config_io.dumps(config))
    command = [sys.executable, "-m", "core", "train", "--config", str(config_file), "--data", str(data_dir),
               "--runs-dir", str(runs_dir)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"The CLI failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def worker_start_up() -> float:
    from core.training.worker import PRELOAD, Worker

    worker = Worker(PRELOAD)
    seconds = worker.wait_ready()
    worker.retire()
    return seconds


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="demo data at 96 px, one head epoch")
    args = parser.parse_args()
    use_shared_weights()
    os.environ.setdefault("TL_CACHE_DIR", tempfile.mkdtemp(prefix="watched-cache-"))
    os.environ["TL_RUNS_DIR"] = runs_root = tempfile.mkdtemp(prefix="watched-runs-")

    from core import settings
    from core.config import DEFAULT_FINE_TUNE, DataConfig, RunConfig, TrainConfig
    from core.data.demo_data import ensure_demo_dataset

    demo_dir = ensure_demo_dataset(settings.cache_dir())
    if args.quick:
        base = RunConfig(data=DataConfig(image_size=96), head=TrainConfig(epochs=1, views=1))
        sets = {"demo (96 px)": demo_dir}
    else:
        base = RunConfig(data=DataConfig(image_size=160), head=TrainConfig(), fine_tune=DEFAULT_FINE_TUNE)
        sets = {"demo (160 px)": demo_dir, "cats vs dogs (160 px)": CATS_VS_DOGS}

    print(f"Worker start-up (spawn + import TensorFlow/Keras and the workflow): {worker_start_up():.1f} s, "
          "paid while the server is idle (a warm worker waits for the next job).\n", flush=True)
    print("| data | unwatched (s) | watched (s) | ratio (target <= 1.1) | head stage unwatched / watched (s) |"
          " CPU while watched: server / browser (s) | head: dashboard / CLI (s) | fine-tune: dashboard / CLI (s) |")
    print("|---|---|---|---|---|---|---|---|")
    watcher = Watcher(Path(runs_root), Path(runs_root) / "streamlit.log")
    try:
        for label, folder in sets.items():
            config = dataclasses.replace(base, data=dataclasses.replace(base.data, source="folder", name=str(folder)))
            alone, alone_metrics = dashboard_run(config, Path("/"), Path(runs_root), None)
            watched, watched_metrics = dashboard_run(config, Path("/"), Path(runs_root), watcher)
            cli = cli_run(config, folder, Path(runs_root))
            head = (alone_metrics["head"]["seconds"], cli["seconds_head"])
            tuned = (alone_metrics.get("fine_tune", {}).get("seconds", 0.0), cli["seconds_fine_tune"])
            stages = (alone_metrics["head"]["seconds"], watched_metrics["head"]["seconds"])
            print(f"| {label} | {alone:.1f} | {watched:.1f} | {ratio(watched, alone)} |"
                  f" {stages[0]:.1f} / {stages[1]:.1f} (ratio {ratio(stages[1], stages[0])}) |"
                  f" {watched_metrics['watch_cpu_seconds'][0]:.1f} / {watched_metrics['watch_cpu_seconds'][1]:.1f} |"
                  f" {head[0]:.1f} / {head[1]:.1f} (ratio {ratio(*head)}) |"
                  f" {tuned[0]:.1f} / {tuned[1]:.1f} (ratio {ratio(*tuned)}) |", flush=True)
    finally:
        watcher.close()
    print(f"\nTargets: watched / unwatched <= {RATIO_TARGET}; dashboard within {CLI_TARGET:.0%} of the CLI "
          "(ratio 0.90-1.10). Stage times are the jobs' own (reading, building, training, evaluating).")
    from pages._common import job_manager

    job_manager().close()


if __name__ == "__main__":
    main()
