"""Batch generation benchmark: does ComfyUI ever idle between jobs?

Runs ``--jobs`` text-to-image jobs through :func:`comfyfleet.generate.batch.run_batch` against the
ComfyUI test server (tests/doubles/comfyui.py) whose prompts each take ``--exec`` seconds,
with outputs stored in a local store, twice in the same process:

  (a) pipelined      ``queue_depth=2`` (the default): the next prompt is queued before the
                     current one finishes
  (b) naive          ``queue_depth=1``: submit, wait, fetch, submit the next (what a simple
                     script does)

The test server runs in its own process (as ComfyUI does; sharing our GIL would slow both).
For each run it prints wall time / (jobs x exec) -- target <= 1.03 for (a) -- and wall time
over the time the server actually spent running prompts (its ``timeline``: the nominal exec
plus its own per-prompt work and, on a loaded machine, sleep overshoot), the idle gaps it saw
between prompts, the time to the first prompt and after the last one, and (b)/(a).

    python bench/generate.py                       # 200 jobs x 0.05 s
    python bench/generate.py --jobs 500 --exec 0.02 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/_common.py puts the repository on sys.path and turns telemetry off, before any
# library is imported; this folder goes on sys.path first, however the file was started.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402, F401

from comfyfleet.comfy.client import ComfyClient  # noqa: E402
from comfyfleet.generate.batch import BatchOptions, run_batch  # noqa: E402
from comfyfleet.generate.jobs import Job  # noqa: E402
from comfyfleet.store.local import LocalStore  # noqa: E402
from tests.doubles.comfyui import FakeComfyUI  # noqa: E402


def _serve_fake(exec_s: float, conn: Any) -> None:
    """Child process: a FakeComfyUI until told to stop, then its idle gaps and run times."""
    with FakeComfyUI(execution_time=exec_s) as fake:
        conn.send(fake.url)
        conn.recv()
        runs = sorted(fake.timeline, key=lambda r: r.started)
        conn.send(
            {
                "gaps": fake.idle_gaps(),
                "runs": [r.ended - r.started for r in runs],
                # CLOCK_MONOTONIC is system-wide on Linux: comparable with the parent's.
                "first_start": runs[0].started if runs else 0.0,
                "last_end": runs[-1].ended if runs else 0.0,
            }
        )


def one_run(jobs: int, exec_s: float, depth: int, workdir: Path) -> dict[str, Any]:
    batch = [
        Job(
            id=f"job-{n:04d}",
            workflow="sdxl_txt2img",
            row=n + 1,
            prompt=f"a fox, take {n}",
            seed=n,
            steps=4,
        )
        for n in range(jobs)
    ]
    store = LocalStore(workdir / f"store-depth{depth}")
    # ComfyUI is its own process: so is the test server, or it would share our GIL.
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=_serve_fake, args=(exec_s, theirs), daemon=True)
    child.start()
    try:
        url = ours.recv()
        with ComfyClient(url) as client:
            began = time.monotonic()
            report = run_batch(
                batch,
                client=client,
                store=store,
                batch_id="bench",
                options=BatchOptions(queue_depth=depth),
            )
            ended = time.monotonic()
            wall = ended - began
        ours.send("stop")
        server = ours.recv()
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    if not report.ok:
        failed = [r for r in report.results if r.status != "ok"]
        raise SystemExit(f"benchmark batch failed: {failed[0].id}: {failed[0].error}")
    gaps = server["gaps"]
    nominal = jobs * exec_s
    return {
        "queue_depth": depth,
        "jobs": jobs,
        "exec_s": exec_s,
        "wall_s": round(wall, 3),
        "ratio_nominal": round(wall / nominal, 4),
        "comfy_exec_s": round(sum(server["runs"]), 3),
        "ratio_reported": round(wall / sum(server["runs"]), 4),
        "idle_total_s": round(sum(gaps), 3),
        "idle_max_s": round(max(gaps, default=0.0), 4),
        "to_first_prompt_s": round(server["first_start"] - began, 3),
        "after_last_prompt_s": round(ended - server["last_end"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument(
        "--exec",
        dest="exec_s",
        type=float,
        default=0.05,
        help="seconds each prompt executes in the test server (default 0.05)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="comfyfleet-bench-") as tmp:
        piped = one_run(args.jobs, args.exec_s, 2, Path(tmp))
        naive = one_run(args.jobs, args.exec_s, 1, Path(tmp))
    speedup = naive["wall_s"] / piped["wall_s"]
    if args.json:
        print(
            json.dumps(
                {"pipelined": piped, "naive": naive, "naive_over_pipelined": round(speedup, 3)},
                indent=2,
            )
        )
        return 0
    print(
        f"{args.jobs} jobs x {args.exec_s} s execution each (ideal {args.jobs * args.exec_s:.2f} s)"
    )
    for label, r in (("pipelined (queue_depth=2)", piped), ("naive     (queue_depth=1)", naive)):
        print(
            f"  {label}: wall {r['wall_s']:.2f} s  wall/(jobs x exec) = {r['ratio_nominal']:.3f}"
            f"  wall/ComfyUI-reported exec ({r['comfy_exec_s']:.2f} s) = {r['ratio_reported']:.3f}"
            f"  idle {r['idle_total_s']:.2f} s (max gap {r['idle_max_s'] * 1000:.1f} ms)"
            f"  start {r['to_first_prompt_s']:.2f} s, tail {r['after_last_prompt_s']:.2f} s"
        )
    server = piped["comfy_exec_s"] / (args.jobs * args.exec_s)
    verdict = "met" if piped["ratio_nominal"] <= 1.03 else "missed"
    print(
        f"  target wall/(jobs x exec) <= 1.03: {piped['ratio_nominal']:.3f} ({verdict}); "
        f"the server's own prompts took {server:.3f}x their nominal time, so ComfyUI was "
        f"busy for {1 / piped['ratio_reported']:.1%} of the wall time"
    )
    print(f"  naive / pipelined wall = {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
