"""Prefect flow ``warmup``: the cold start of one GPU instance, phase by phase.

Thin on purpose: the parameters become a ``WarmupOptions`` and the work is the same driver
as ``comfyfleet warmup`` (:func:`comfyfleet.warmup.driver.warm_up`), handed a ``run_phase``
hook that runs each phase as one task (``preflight``, ``pull``, ``place``, ``comfy-boot``,
``first-prompt``) so the run graph shows where the minutes went. The pull is one task (the
engine parallelises ranges across files itself; a task per file would only add engine
overhead) and reports bytes through a throttled progress artifact. Only the pull task
retries, on transient errors only (``PHASE_RETRY_DELAYS_S``): a retried pull resumes its
``.part`` files, and the driver, given the hook, retries nothing itself.

Whatever happens, the cold-start record is published (history row in the store, timeline
PNG) and shown as a table artifact of the phases plus a markdown summary; then the flow
fails if any phase failed, or if the target was missed and ``fail_on_target`` is set.

Three ways to run it: the on-start script rendered with ``--via flow`` runs it in place
(``python -m flows.warmup`` takes the options of ``comfyfleet warmup``); ``prefect.yaml``
deploys it with an event trigger on ``comfyfleet.instance.started``, which the script
rendered with ``--via worker`` emits after starting the instance's worker (see
``EVENT_PARAMETERS``); or any deployment/``serve`` with explicit parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from comfyfleet.errors import ConfigError
from comfyfleet.files import write_atomic
from comfyfleet.warmup.driver import (
    PHASE_RETRY_DELAYS_S,
    PHASE_STEPS,
    WarmupResult,
    needs_store,
    open_catalog,
    warm_up,
)
from comfyfleet.warmup.events import trigger_parameters
from comfyfleet.warmup.options import WarmupOptions, add_arguments, from_namespace
from comfyfleet.warmup.reports import markdown_summary, phase_rows, verdict_line
from flows._common import ProgressThrottle, artifact_key, open_flow_store, transient_only

# What the deployment's trigger passes from the on-start script's event
# (events.INSTANCE_STARTED); every value arrives as a string ("" when missing: a default).
EVENT_PARAMETERS = trigger_parameters()


def _artifact_key(prefix: str, instance_id: str) -> str:
    return artifact_key(prefix, instance_id)


class ArtifactProgress:
    """``WarmupProgress`` -> a progress artifact, updated at most every 2 % or 15 s."""

    def __init__(self) -> None:
        self.artifact_id: Any = None
        self.total = 0
        self.done = 0
        self._throttle = ProgressThrottle(last_pct=0.0)
        self._lock = threading.Lock()

    def phase(self, name: str) -> None:
        get_run_logger().info("warm-up phase %s", name)

    def plan(self, files: int, total_bytes: int) -> None:
        self.total = total_bytes
        if files:
            self.artifact_id = create_progress_artifact(
                progress=0.0, description=f"pulling {files} file(s), {total_bytes} bytes"
            )
            self._throttle.last_t = time.monotonic()

    def advance(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.artifact_id is None or not self.total:
                return
            pct = min(100.0, 100.0 * self.done / self.total)
            if not self._throttle.due(pct, force=pct >= 100.0):
                return
        update_progress_artifact(artifact_id=self.artifact_id, progress=pct)


def _phase_task(name: str) -> Any:
    """The task that runs driver phase ``name``; its retries come from the driver's table
    (``PHASE_RETRY_DELAYS_S``), so the driver, handed this runner, retries nothing."""
    delays = PHASE_RETRY_DELAYS_S.get(name, ())

    @task(
        name=name.replace("_", "-"),
        cache_policy=NO_CACHE,
        retries=len(delays),
        retry_delay_seconds=list(delays),
        retry_condition_fn=transient_only,
    )
    def run(step: Callable[[], None]) -> None:
        step()

    return run


PHASE_TASKS = {name: _phase_task(name) for name in PHASE_STEPS}


def run_phase_as_task(name: str, step: Callable[[], None]) -> None:
    """The driver's ``run_phase`` hook: each phase is one task run."""
    PHASE_TASKS[name](step)


def _artifacts(result: WarmupResult, instance_id: str, presign_s: int | None) -> None:
    record = result.record
    pub = result.published
    links: dict[str, str] = {}
    if pub is not None and pub.timeline_url:
        links["timeline PNG"] = pub.timeline_url
    create_table_artifact(
        table=phase_rows(record),
        key=_artifact_key("warmup-phases", instance_id),
        description=verdict_line(record),
    )
    create_markdown_artifact(
        markdown=markdown_summary(record, links=links),
        key=_artifact_key("warmup-summary", instance_id),
        description=verdict_line(record),
    )
    if pub is None:
        return
    if pub.timeline_url:
        create_image_artifact(
            image_url=pub.timeline_url,
            key=_artifact_key("warmup-timeline", instance_id),
            description=f"phase timeline (presigned link, valid {presign_s} s)",
        )
    elif pub.timeline_key:
        create_link_artifact(
            link=f"{record.store}/{pub.timeline_key}",
            link_text=pub.timeline_key,
            key=_artifact_key("warmup-timeline", instance_id),
            description="phase timeline PNG in the store",
        )


# Parameters of the flow that are not warm-up options: where the inputs come from and
# where the report goes. Every other parameter is a WarmupOptions field (a test checks
# names and defaults), so the defaults below are read from WarmupOptions.
INPUT_PARAMETERS = ("store", "store_block", "catalog", "report_path")
_D = WarmupOptions


def _run_name() -> str:
    """``warmup-<instance id>``: the UI shows which instance each run warmed."""
    from prefect.runtime import flow_run

    instance = flow_run.parameters.get("instance_id") or "local"
    return f"warmup-{instance}"


@flow(name="warmup", flow_run_name=_run_name, log_prints=False)
def warmup(
    comfy_root: str,
    store: str | None = None,
    store_block: str | None = None,
    catalog: list[str] | None = None,
    profile: str = _D.profile,
    vram_gb: float | None = _D.vram_gb,
    gpu: str | None = _D.gpu,
    force: bool = _D.force,
    mode: str | None = None,  # default: $COMFYFLEET_MODE, else script (WarmupOptions)
    verify: str = _D.verify,
    comfy_url: str | None = _D.comfy_url,
    start_comfy: str | None = _D.start_comfy,
    warmup_workflow: str | None = None,
    models_dir: str | None = None,
    baked_manifest: str | None = None,
    timeline: str | None = None,
    fail_on_target: bool = _D.fail_on_target,
    target_s: float | None = _D.target_s,
    instance_id: str = _D.instance_id,
    history: bool = _D.history,
    boot_timeout_s: float = _D.boot_timeout_s,
    prompt_timeout_s: float = _D.prompt_timeout_s,
    wait_lock_s: float = _D.wait_lock_s,
    write_path: str = _D.write_path,
    fast_http: bool = _D.fast_http,
    timeline_presign_s: int | None = _D.timeline_presign_s,
    report_path: str | None = None,
) -> dict[str, Any]:
    """Warm up one ComfyUI root from the mirror (parameters mirror ``comfyfleet warmup``;
    see ``WarmupOptions`` for each).

    Returns the result as JSON-ready data; fails when a phase failed (and, with
    ``fail_on_target``, when the cold start missed its target). The record is published
    either way. ``timeline_presign_s`` makes the timeline an image artifact through a
    presigned URL valid that long (S3 stores only; the URL is a read token for the PNG);
    without it the artifact is a link to the PNG's place in the store. ``report_path``
    receives the result as JSON, also when the flow fails.
    """
    params = dict(locals())
    logger = get_run_logger()
    options = WarmupOptions.build({k: v for k, v in params.items() if k not in INPUT_PARAMETERS})
    given = bool(store or store_block)
    opened = (
        open_flow_store(store, store_block) if needs_store(options, store_given=given) else None
    )
    cat = open_catalog(catalog or [], options)
    result = warm_up(
        options,
        store=opened,
        catalog=cat,
        progress=ArtifactProgress(),
        run_phase=run_phase_as_task,
    )
    for problem in result.published.problems if result.published else []:
        logger.warning("report: %s", problem)
    _artifacts(result, options.instance_id, options.timeline_presign_s)
    logger.info(verdict_line(result.record))
    if report_path:
        _write_json(Path(report_path), result.to_dict())
    result.raise_for_failure()
    if options.fail_on_target and not result.passed:
        raise ConfigError(
            f"cold start missed its target: {verdict_line(result.record)}",
            hint="see the warmup-phases artifact for where the time went",
        )
    return result.to_dict()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.warmup [comfyfleet warmup options]``: the CLI's warm-up, run as the
    ``warmup`` flow so the Prefect server (``PREFECT_API_URL``) records its tasks and
    artifacts. Prints the result as JSON; exit 0 done, 1 failed."""
    parser = argparse.ArgumentParser(prog="python -m flows.warmup")
    inputs = parser.add_mutually_exclusive_group()
    inputs.add_argument("--store", metavar="URI", help="store URI (default $COMFYFLEET_STORE)")
    inputs.add_argument("--store-block", metavar="NAME", help="a saved comfyfleet-store block")
    parser.add_argument("--catalog", action="append", default=[], metavar="PATH")
    parser.add_argument("--json", action="store_true", help="accepted: the output is JSON")
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    options = from_namespace(args)
    parameters = {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items() if v is not None
    }
    with tempfile.TemporaryDirectory(prefix="comfyfleet-warmup-") as tmp:
        report = Path(tmp) / "report.json"
        state = warmup(
            **parameters,
            store=args.store,
            store_block=args.store_block,
            catalog=list(args.catalog),
            report_path=str(report),
            return_state=True,
        )
        if report.exists():
            sys.stdout.write(report.read_text(encoding="utf-8"))
    if state.is_completed():
        return 0
    print(f"error: the warmup flow ended {state.name}: {state.message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
