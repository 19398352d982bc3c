"""Prefect flow ``warmup``: the cold start of one GPU instance, phase by phase.

Thin on purpose: the work is :class:`comfyfleet.warmup.driver.WarmupSession`; each phase runs as
one task (``preflight``, ``pull``, ``place``, ``comfy-boot``, ``first-prompt``) so the run
graph shows where the minutes went. The pull is one task (the engine parallelises ranges
across files itself; a task per file would only add engine overhead) and reports bytes
through a throttled progress artifact. Only the pull and the boot retry, and only on
transient errors (store 5xx, ComfyUI not answering yet): a retried pull resumes its
``.part`` files.

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

from comfyfleet.catalog import AUTO_PROFILE, load_catalog
from comfyfleet.errors import ComfyfleetError, ConfigError
from comfyfleet.files import write_atomic
from comfyfleet.warmup.driver import WarmupResult, WarmupSession
from comfyfleet.warmup.reports import markdown_summary, phase_rows, publish, verdict_line
from flows._common import ProgressThrottle, artifact_key, open_flow_store, transient_only

# What the deployment's trigger passes from the on-start script's event
# (render.EVENT_STARTED); every value arrives as a string.
EVENT_PARAMETERS = {
    "comfy_root": "{{ event.payload.comfy_root }}",
    "profile": "{{ event.payload.profile }}",
    "mode": "{{ event.payload.mode }}",
    "verify": "{{ event.payload.verify }}",
    "comfy_url": "{{ event.payload.comfy_url }}",
    "instance_id": "{{ event.payload.instance_id }}",
}


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


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(session: WarmupSession) -> dict[str, Any]:
    session.preflight()
    choice = session.choice
    return {"profile": choice.name if choice else "", "files": len(session.items)}


@task(
    name="pull",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[5, 20, 60],
    retry_condition_fn=transient_only,
)
def pull_task(session: WarmupSession) -> dict[str, Any]:
    session.pull()
    report = session.report
    return {"bytes_downloaded": report.bytes_downloaded if report else 0}


@task(name="place", cache_policy=NO_CACHE)
def place_task(session: WarmupSession) -> None:
    session.place()


@task(
    name="comfy-boot",
    cache_policy=NO_CACHE,
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=transient_only,
)
def boot_task(session: WarmupSession) -> dict[str, Any]:
    session.boot()
    return session.comfy.to_dict() if session.comfy else {}


@task(name="first-prompt", cache_policy=NO_CACHE)
def first_prompt_task(session: WarmupSession) -> dict[str, Any] | None:
    session.first_prompt()
    return session.first_prompt_info


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


@flow(name="warmup", log_prints=False)
def warmup(
    comfy_root: str,
    store: str | None = None,
    store_block: str | None = None,
    catalog: list[str] | None = None,
    profile: str = AUTO_PROFILE,
    vram_gb: float | None = None,
    gpu: str | None = None,
    force: bool = False,
    mode: str = "script",
    verify: str = "fast",
    comfy_url: str | None = None,
    start_comfy: str | None = None,
    warmup_workflow: str | None = None,
    models_dir: str | None = None,
    baked_manifest: str | None = None,
    timeline: str | None = None,
    fail_on_target: bool = False,
    target_s: float | None = None,
    instance_id: str = "",
    history: bool = True,
    boot_timeout_s: float = 600.0,
    prompt_timeout_s: float = 1800.0,
    timeline_presign_s: int | None = None,
    report_path: str | None = None,
) -> dict[str, Any]:
    """Warm up one ComfyUI root from the mirror (parameters mirror ``comfyfleet warmup``).

    Returns the result as JSON-ready data; fails when a phase failed (and, with
    ``fail_on_target``, when the cold start missed its target). The record is published
    either way. ``timeline_presign_s`` makes the timeline an image artifact through a
    presigned URL valid that long (S3 stores only; the URL is a read token for the PNG);
    without it the artifact is a link to the PNG's place in the store. ``report_path``
    receives the result as JSON, also when the flow fails.
    """
    logger = get_run_logger()
    baked = mode == "baked"
    opened = open_flow_store(store, store_block) if (store or store_block or not baked) else None
    try:
        cat = load_catalog(catalog or [])
    except ComfyfleetError:
        if not baked:
            raise
        cat = None
    session = WarmupSession(
        store=opened,
        comfy_root=Path(comfy_root),
        catalog=cat,
        profile=profile or AUTO_PROFILE,
        vram_gb=vram_gb,
        gpu=gpu or None,
        force=force,
        mode=mode,
        verify=verify,
        comfy_url=comfy_url or None,
        start_comfy=start_comfy or None,
        warmup_workflow=Path(warmup_workflow) if warmup_workflow else None,
        models_dir=Path(models_dir) if models_dir else None,
        baked_manifest=Path(baked_manifest) if baked_manifest else None,
        progress=ArtifactProgress(),
        instance_id=instance_id,
        target_s=target_s,
        boot_timeout_s=boot_timeout_s,
        prompt_timeout_s=prompt_timeout_s,
    )
    failure: BaseException | None = None
    try:
        preflight_task(session)
        pull_task(session)
        place_task(session)
        boot_task(session)
        first_prompt_task(session)
    except (ComfyfleetError, OSError) as exc:
        failure = exc
    except BaseException:
        session.close()
        raise
    result = session.finish(failure)
    result.published = publish(
        result.record,
        opened,
        timeline_path=Path(timeline) if timeline else None,
        history=history,
        presign_s=timeline_presign_s,
    )
    for problem in result.published.problems:
        logger.warning("report: %s", problem)
    _artifacts(result, instance_id, timeline_presign_s)
    logger.info(verdict_line(result.record))
    if report_path:
        _write_json(Path(report_path), result.to_dict())
    result.raise_for_failure()
    if fail_on_target and not result.passed:
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
    from comfyfleet.cli import warmup_cmd

    parser = argparse.ArgumentParser(prog="python -m flows.warmup")
    warmup_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["warmup", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="comfyfleet-warmup-") as tmp:
        report = Path(tmp) / "report.json"
        state = warmup(
            comfy_root=str(args.comfy_root),
            store=args.store,
            store_block=args.store_block,
            catalog=list(args.catalog),
            profile=args.profile,
            vram_gb=args.vram_gb,
            gpu=args.gpu,
            force=args.force,
            mode=args.mode,
            verify=args.verify,
            comfy_url=args.comfy_url,
            start_comfy=args.start_comfy,
            warmup_workflow=str(args.warmup_workflow) if args.warmup_workflow else None,
            models_dir=str(args.models_dir) if args.models_dir else None,
            baked_manifest=str(args.baked_manifest) if args.baked_manifest else None,
            timeline=str(args.timeline) if args.timeline else None,
            fail_on_target=args.fail_on_target,
            target_s=args.target_s,
            instance_id=args.instance_id,
            history=not args.no_history,
            boot_timeout_s=args.boot_timeout,
            prompt_timeout_s=args.prompt_timeout,
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
