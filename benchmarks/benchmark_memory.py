"""Memory over repeated runs in one long-lived process, as in the dashboard's server.

Runs the same small training job (built-in demo data at 96 px, MobileNetV2, head and
one fine-tuning epoch) several times through one JobManager and prints the process's
resident memory after each, so growth from run to run is visible.

    python benchmarks/benchmark_memory.py [--runs 6]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.benchmark_training import use_shared_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args()
    use_shared_weights()

    from core import workflow
    from core.config import DataConfig, RunConfig, TrainConfig
    from core.training import runs
    from core.training.jobs import JobManager

    config = RunConfig(data=DataConfig(image_size=96), head=TrainConfig(epochs=2),
                       fine_tune=TrainConfig(epochs=1, learning_rate=1e-4, fine_tune_at="100"))
    runs_dir = Path(tempfile.mkdtemp(prefix="memory-runs-"))
    manager, process = JobManager(), psutil.Process()
    sizes = []
    print("| run | resident memory (MB) | change (MB) |\n|---|---|---|")
    for number in range(1, args.runs + 1):
        run = runs.Run.create(runs_dir, config)
        manager.submit(run, workflow.full_job)
        manager.wait()
        assert run.status()["status"] == runs.FINISHED, run.read_log()
        sizes.append(process.memory_info().rss / 2**20)
        change = f"{sizes[-1] - sizes[-2]:+.0f}" if len(sizes) > 1 else ""
        print(f"| {number} | {sizes[-1]:.0f} | {change} |", flush=True)
    print(f"\nFrom run 2 to run {args.runs}: {sizes[-1] - sizes[1]:+.0f} MB "
          f"({(sizes[-1] - sizes[1]) / max(args.runs - 2, 1):+.1f} MB per run).")


if __name__ == "__main__":
    main()
