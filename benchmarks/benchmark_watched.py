"""Does watching a run slow it? The same head run with and without a page polling it,
and the dashboard's job path against the CLI on the same data.

For each dataset (the built-in demo, and ../shared/datasets/cats_vs_dogs at 160 px with
MobileNetV2 and the real ImageNet weights) it runs, through the dashboard's job queue
(`pages._common.job_manager()`, a worker process per job):

1. the run with nobody watching;
2. the same run while a Train head page follows it: a Streamlit AppTest session in
   this (the server's) process reruns the whole page every `POLL_SECONDS`, which is
   more work than the page's polling fragment does (an upper bound on the cost);
3. `python -m core train` on the same data and settings.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.benchmark_training import DATA as CATS_VS_DOGS
from benchmarks.benchmark_training import use_shared_weights

RATIO_TARGET = 1.1
CLI_TARGET = 0.10


def dashboard_run(config, data_root: Path, runs_dir: Path, watched: bool) -> tuple[float, dict]:
    """Wall seconds of one full job through the dashboard's queue, and its metrics."""
    from streamlit.testing.v1 import AppTest

    from core import workflow
    from core.training import runs
    from pages._common import job_manager
    from pages._training import POLL_SECONDS

    run = runs.Run.create(runs_dir, config)
    job_manager().warm_worker().wait_ready()  # as in a server that has been up a while: a warm worker waits
    started = time.perf_counter()
    job_manager().submit(run, functools.partial(workflow.full_job, data_root=data_root))
    polls = 0
    if watched:
        page = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
        page.query_params["run"] = run.id  # the page follows this run, as after pressing Start
        page.run()
        page.switch_page("pages/train_head.py")
        while not job_manager().wait(timeout=POLL_SECONDS):
            page.run()
            polls += 1
    assert job_manager().wait()
    seconds = time.perf_counter() - started
    status = run.status()
    assert status["status"] == runs.FINISHED, run.read_log()
    return seconds, {**run.read_json("metrics.json"), "polls": polls}


def cli_run(config, data_dir: Path, runs_dir: Path) -> dict:
    """The CLI's result JSON for the same settings."""
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
          "paid while the previous job runs (a warm worker waits for the next job).\n", flush=True)
    print("| data | unwatched (s) | watched (s) | ratio (target <= 1.1) | head stage unwatched / watched (s) |"
          " page polls | head: dashboard / CLI (s) | fine-tune: dashboard / CLI (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, folder in sets.items():
        config = dataclasses.replace(base, data=dataclasses.replace(base.data, source="folder", name=str(folder)))
        runs_dir = Path(runs_root) / label.split()[0]
        runs_dir.mkdir(parents=True, exist_ok=True)
        alone, alone_metrics = dashboard_run(config, Path("/"), runs_dir, watched=False)
        watched, watched_metrics = dashboard_run(config, Path("/"), runs_dir, watched=True)
        cli = cli_run(config, folder, runs_dir)
        head = (alone_metrics["head"]["seconds"], cli["seconds_head"])
        tuned = (alone_metrics.get("fine_tune", {}).get("seconds", 0.0), cli["seconds_fine_tune"])
        stages = (alone_metrics["head"]["seconds"], watched_metrics["head"]["seconds"])
        print(f"| {label} | {alone:.1f} | {watched:.1f} | {ratio(watched, alone)} |"
              f" {stages[0]:.1f} / {stages[1]:.1f} (ratio {ratio(stages[1], stages[0])}) | {watched_metrics['polls']} |"
              f" {head[0]:.1f} / {head[1]:.1f} (ratio {ratio(*head)}) |"
              f" {tuned[0]:.1f} / {tuned[1]:.1f} (ratio {ratio(*tuned)}) |", flush=True)
    print(f"\nTargets: watched / unwatched <= {RATIO_TARGET}; dashboard within {CLI_TARGET:.0%} of the CLI "
          "(ratio 0.90-1.10). Stage times are the jobs' own (reading, building, training, evaluating).")
    from pages._common import job_manager

    job_manager().close()


if __name__ == "__main__":
    main()
