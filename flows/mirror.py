"""Prefect flows ``mirror-models`` and ``mirror-refresh``: thin wrappers over the library.

``mirror-models`` builds :class:`~comfyfleet.mirror.options.MirrorOptions` from its
parameters and calls the same driver as ``comfyfleet mirror``
(:func:`comfyfleet.mirror.driver.mirror_models`), passing a ``submit`` hook that runs each
file as a ``mirror-file`` task on a bounded ``ThreadPoolTaskRunner``; parts, chunks and
hashing stay inside the library. Retries follow the rule in ``comfyfleet.errors``: the
driver starts a file once per task attempt (``FLOW_FILE_ATTEMPTS``), the library reopens a
broken source stream where it stopped, and the task retries only transient errors (with
exponential backoff and jitter), resuming what the store already holds. Bytes reach the UI
as one progress artifact for the whole run (updated at most every 2 % or 15 s), results as
a table artifact and a markdown summary. The driver writes the manifest once, after every
file; then the flow fails if any file failed.

``mirror-refresh`` asks every source what it holds now and reports changes (table +
markdown); it never replaces a file. See :func:`mirror_refresh_flow` for the event and the
final state it ends in when something changed.

Parameters are names and URIs only: the store (``store`` URI or ``store_block`` name) and
the tokens (``tokens_block`` name of a ``comfyfleet-source-tokens`` block, else
``HF_TOKEN``/``CIVITAI_TOKEN`` from the environment) are opened inside the run, so no client
and no secret is ever a parameter. The tokens block is loaded only when a selected file's
source may need a token.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from comfyfleet.catalog import ModelFile, load_catalog
from comfyfleet.errors import FLOW_FILE_ATTEMPTS, ComfyfleetError
from comfyfleet.mirror.driver import MirrorResult, MirrorRun, Submit, mirror_models, summarize
from comfyfleet.mirror.options import (
    DEFAULT_PARALLEL,
    MirrorOptions,
    TokenSource,
    needs_token,
    select_models,
)
from comfyfleet.mirror.refresh import (
    UPSTREAM_CHANGED_EVENT,
    UpstreamChange,
    check_upstream,
    upstream_notice,
)
from comfyfleet.mirror.upload import ProgressSubscriber
from comfyfleet.sources import Tokens
from comfyfleet.units import format_bytes
from flows._common import ProgressThrottle, load_tokens, open_flow_store, transient_only

RESULTS_KEY = "mirror-results"
SUMMARY_KEY = "mirror-summary"
PROGRESS_KEY = "mirror-progress"
REFRESH_KEY = "mirror-refresh-changes"
REFRESH_SUMMARY_KEY = "mirror-refresh-summary"


def refresh_models(
    catalog_paths: list[str] | None, profile: str | None, ids: list[str] | None
) -> list[ModelFile]:
    """What a refresh checks: ``ids``, else ``profile``, else every file of the catalog."""
    catalog = load_catalog(catalog_paths or None)
    if ids:
        return catalog.select(ids=ids)
    return catalog.select(profile=profile or "full")


# ---------------------------------------------------------------- progress


class RunProgress:
    """Bytes of every file of one run folded into one throttled progress artifact."""

    def __init__(self, models: list[ModelFile]) -> None:
        self._lock = threading.Lock()
        self.totals = {m.id: m.size or 0 for m in models}
        self.done = dict.fromkeys(self.totals, 0)
        self._artifact: Any = None
        self._throttle = ProgressThrottle()
        self._broken = False

    def start_artifact(self) -> None:
        try:
            self._artifact = create_progress_artifact(
                progress=0.0, key=PROGRESS_KEY, description="bytes mirrored (%)"
            )
        except Exception as exc:  # noqa: BLE001 - the UI is a nicety, the mirror is not
            self._broken = True
            get_run_logger().warning("progress artifact disabled: %s", exc)

    def percent(self) -> float:
        total = sum(self.totals.values())
        return 100.0 * min(1.0, sum(self.done.values()) / total) if total else 0.0

    def subscriber(self, model: ModelFile) -> ProgressSubscriber:
        """The driver's ``progress_for`` hook."""
        return _FileProgress(self, model.id)

    def settle(self, result: MirrorResult) -> None:
        """The driver's ``on_result`` hook: a finished or failed file counts as done."""
        self.finish(result.id, result.bytes if result.ok else 0)

    def learn_total(self, model_id: str, total: int | None) -> None:
        with self._lock:
            if total and not self.totals.get(model_id):
                self.totals[model_id] = total

    def add(self, model_id: str, n: int) -> None:
        with self._lock:
            self.done[model_id] = max(0, self.done.get(model_id, 0) + n)
        self.publish()

    def finish(self, model_id: str, size: int) -> None:
        with self._lock:
            self.totals[model_id] = self.totals.get(model_id) or size
            self.done[model_id] = self.totals[model_id]
        self.publish()

    def publish(self, *, force: bool = False) -> None:
        if self._broken or self._artifact is None:
            return
        with self._lock:
            pct = self.percent()
            if not self._throttle.due(pct, force=force):
                return
        try:
            update_progress_artifact(artifact_id=self._artifact, progress=round(pct, 1))
        except Exception as exc:  # noqa: BLE001 - the UI is a nicety, the mirror is not
            self._broken = True
            get_run_logger().warning("progress artifact disabled: %s", exc)


class _FileProgress(ProgressSubscriber):
    def __init__(self, run: RunProgress, model_id: str) -> None:
        self.run = run
        self.model_id = model_id

    def on_start(self, key: str, total: int | None) -> None:
        self.run.learn_total(self.model_id, total)

    def on_bytes(self, n: int) -> None:
        self.run.add(self.model_id, n)


# ---------------------------------------------------------------- mirror-models


@task(
    name="mirror-file",
    task_run_name="mirror-{model.id}",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_jitter_factor=0.5,
    retry_condition_fn=transient_only,
    cache_policy=NO_CACHE,
)
def mirror_file_task(model: ModelFile, work: Callable[[], MirrorResult]) -> MirrorResult:
    """Mirror one file (``work`` is the driver's unit for it); raises its error so that
    Prefect retries transient ones. The driver starts the file once per attempt
    (``file_attempts=FLOW_FILE_ATTEMPTS``): this task owns whole-file retries."""
    result = work()
    speed = f", {result.mb_per_s:.1f} MB/s" if result.mb_per_s is not None else ""
    get_run_logger().info(
        "%s %s: %s in %.1f s%s",
        result.status,
        model.key,
        format_bytes(result.bytes),
        result.seconds,
        speed,
    )
    return result


def task_submit(runner: ThreadPoolTaskRunner[MirrorResult]) -> Submit:
    """The driver's ``submit`` hook: each file becomes a ``mirror-file`` task run."""

    def submit(model: ModelFile, work: Callable[[], MirrorResult]) -> Callable[[], MirrorResult]:
        future = runner.submit(mirror_file_task, {"model": model, "work": work})
        return future.result

    return submit


def flow_tokens(tokens_block: str | None) -> TokenSource:
    """Tokens from the ``comfyfleet-source-tokens`` block (else the environment), loaded
    only when the driver meets a file whose source may need a token: a missing block
    fails the Hugging Face and CivitAI files, never URL or s3 ones."""
    return functools.partial(load_tokens, tokens_block)


def results_table(results: list[MirrorResult]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        speed = r.mb_per_s
        rows.append(
            {
                "file": r.key,
                "bytes": r.bytes,
                "seconds": round(r.seconds, 2),
                "MB/s": round(speed, 1) if speed is not None else "",
                "sha256": r.sha256 or "",
                "status": r.status,
                "error": r.error or "",
            }
        )
    return rows


def summary_markdown(results: list[MirrorResult], store_uri: str, seconds: float) -> str:
    counts = {
        s: sum(1 for r in results if r.status == s) for s in ("mirrored", "skipped", "failed")
    }
    moved = sum(r.bytes for r in results if r.status == "mirrored")
    present = sum(r.bytes for r in results if r.status != "failed")
    lines = [
        "# Mirror",
        "",
        f"Store: `{store_uri}`",
        "",
        "| mirrored | skipped | failed | bytes moved | verified in store | wall time |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {counts['mirrored']} | {counts['skipped']} | {counts['failed']} | "
        f"{format_bytes(moved)} | {format_bytes(present)} | {seconds:.1f} s |",
    ]
    if moved and seconds > 0:
        lines += ["", f"Throughput: {moved / seconds / 1e6:.1f} MB/s over the whole run."]
    failed = [r for r in results if r.status == "failed"]
    if failed:
        lines += ["", "## Failures", ""]
        lines += [f"- `{r.id}` ({r.key}): {r.error}" for r in failed]
        lines += [
            "",
            "Rerun the flow after fixing the causes: finished files are skipped and "
            "unfinished uploads resume.",
        ]
    return "\n".join(lines) + "\n"


@flow(name="mirror-models")
def mirror_models_flow(
    catalog_paths: list[str] | None = None,
    profile: str | None = None,
    ids: list[str] | None = None,
    store: str | None = None,
    store_block: str | None = None,
    force: bool = False,
    max_parallel: int = DEFAULT_PARALLEL,
    tokens_block: str | None = None,
) -> list[dict[str, Any]]:
    """Mirror the catalog's files into the store, verified (the driver ``comfyfleet mirror``
    runs, with the same defaults).

    Args:
        catalog_paths: catalog files ("builtin" = the shipped one); default the built-in.
        profile: the profile to mirror (ignored when ``ids`` are given); default: every
            entry of the user catalog files given, else the built-in ``minimal``.
        ids: only these model ids.
        store: the store URI (``s3://bucket/prefix``, a path); default ``$COMFYFLEET_STORE``.
        store_block: name of a ``comfyfleet-store`` block (wins over ``store``).
        force: download again even when the store holds the file.
        max_parallel: files at once (each file's memory is bounded, see TransferSettings).
        tokens_block: name of a ``comfyfleet-source-tokens`` block; default the environment.
    """
    logger = get_run_logger()
    options = MirrorOptions(
        catalog_paths=tuple(catalog_paths or ()),
        profile=profile,
        ids=tuple(ids or ()),
        force=force,
        parallel=max_parallel,
        store=store,
        file_attempts=FLOW_FILE_ATTEMPTS,
        tokens=flow_tokens(tokens_block),
    )
    models = select_models(options)
    flow_store = open_flow_store(store, store_block)  # fail fast on a bad store
    logger.info("mirroring %d file(s) into %s", len(models), flow_store.uri)
    progress = RunProgress(models)
    progress.start_artifact()
    # A runner of this run's own size: max_parallel is a parameter, the decorator's is not.
    pool: ThreadPoolTaskRunner[MirrorResult] = ThreadPoolTaskRunner(max_workers=max_parallel)
    with pool as runner:
        run = mirror_models(
            options,
            store=flow_store,
            models=models,
            progress_for=progress.subscriber,
            on_result=progress.settle,
            submit=task_submit(runner),
        )
    progress.publish(force=True)
    return report_run(run)


def report_run(run: MirrorRun) -> list[dict[str, Any]]:
    """Artifacts and the log line for a finished run; raises when a file failed."""
    create_table_artifact(
        table=results_table(run.results),
        key=RESULTS_KEY,
        description=f"mirror into {run.store_uri}",
    )
    create_markdown_artifact(
        markdown=summary_markdown(run.results, run.store_uri, run.seconds), key=SUMMARY_KEY
    )
    failed = run.failed
    for r in failed:
        get_run_logger().error("failed %s: %s", r.key, r.error)
    get_run_logger().info(
        "%s; manifest %s",
        summarize(run),
        "written" if run.manifest_written else "unchanged",
    )
    if failed:
        raise ComfyfleetError(
            f"{len(failed)} of {len(run.results)} file(s) failed to mirror: "
            + "; ".join(f"{r.id}: {r.error}" for r in failed),
            hint="see the mirror-results artifact; a rerun skips finished files and resumes "
            "unfinished uploads",
        )
    return [r.row() for r in run.results]


# ---------------------------------------------------------------- mirror-refresh


@task(name="check-upstream", cache_policy=NO_CACHE)
def check_upstream_task(
    models: list[ModelFile], store: str | None, store_block: str | None, tokens_block: str | None
) -> list[UpstreamChange]:
    tokens = load_tokens(tokens_block) if any(needs_token(m) for m in models) else Tokens()
    return check_upstream(models, open_flow_store(store, store_block), tokens)


def refresh_markdown(changes: list[UpstreamChange], checked: int, store_uri: str) -> str:
    lines = ["# Upstream refresh", "", f"Store: `{store_uri}`; {checked} file(s) checked.", ""]
    if not changes:
        return "\n".join([*lines, "Nothing changed upstream."]) + "\n"
    kinds: dict[str, int] = {}
    for c in changes:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    lines += ["| kind | count |", "|---|---:|"]
    lines += [f"| {k} | {n} |" for k, n in sorted(kinds.items())]
    lines += ["", "## Changes", ""]
    lines += [f"- `{c.id}` **{c.kind}**: {c.detail}" for c in changes]
    lines += [
        "",
        "Pinned files are never replaced by the mirror; update their catalog entries "
        "(sha256, size, revision) to take a change.",
    ]
    return "\n".join(lines) + "\n"


UPSTREAM_CHANGED_STATE = "UpstreamChanged"


def emit_upstream_changed(notice: dict[str, Any], store_uri: str) -> None:
    """Emit ``comfyfleet.mirror.upstream-changed`` for the store (resource) with ``notice``
    as payload. The resource label ``comfyfleet.mirror.unpinned`` is "true" when a mirror
    run would take some change: the automation in prefect.yaml matches on it."""
    slug = re.sub(r"[^a-z0-9]+", "-", store_uri.lower()).strip("-") or "store"
    emit_event(
        event=UPSTREAM_CHANGED_EVENT,
        resource={
            "prefect.resource.id": f"comfyfleet.mirror.{slug}",
            "prefect.resource.name": store_uri,
            "comfyfleet.mirror.unpinned": "true" if notice["unpinned_ids"] else "false",
        },
        payload={"store": store_uri, **notice},
    )


@flow(name="mirror-refresh")
def mirror_refresh_flow(
    catalog_paths: list[str] | None = None,
    profile: str | None = None,
    ids: list[str] | None = None,
    store: str | None = None,
    store_block: str | None = None,
    tokens_block: str | None = None,
) -> list[dict[str, Any]] | State[Any]:
    """Re-check upstream for the catalog's files (default: all) and report what changed.

    Reports new HF commits on unpinned refs, newer files on ``main`` for pinned commits,
    new CivitAI versions of tracked models, changed sizes/hashes and unreachable sources;
    replaces nothing.

    When something notable turned up (anything but ``not-mirrored``), the flow emits
    ``comfyfleet.mirror.upstream-changed`` (payload: :func:`upstream_notice`) and ends in
    a **Failed** state named ``UpstreamChanged`` whose message lists the ids. Why Failed
    and not a Completed variant: an operator notices failures without extra setup (the
    run is red in the UI, the usual "flow run failed" notifications fire,
    ``prefect deployment run --watch`` exits non-zero), and a refresh that found drift
    did not reach its goal of confirming the mirror is current. The state's name keeps it
    apart from a crash; its data is the same change rows a clean run returns. A clean
    run (nothing, or only files not mirrored yet) ends Completed.
    """
    models = refresh_models(catalog_paths, profile, ids)
    store_uri = open_flow_store(store, store_block).uri
    changes = check_upstream_task(models, store, store_block, tokens_block)
    create_table_artifact(
        table=[c.row() for c in changes]
        or [{"id": "", "kind": "none", "detail": "nothing changed"}],
        key=REFRESH_KEY,
        description=f"upstream changes for {len(models)} file(s)",
    )
    create_markdown_artifact(
        markdown=refresh_markdown(changes, len(models), store_uri), key=REFRESH_SUMMARY_KEY
    )
    get_run_logger().info("%d upstream change(s) in %d file(s)", len(changes), len(models))
    rows = [c.row() for c in changes]
    notice = upstream_notice(changes)
    if notice is None:
        return rows
    emit_upstream_changed(notice, store_uri)
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(notice["kinds"].items()))
    return Failed(
        name=UPSTREAM_CHANGED_STATE,
        message=f"upstream changed for {len(notice['ids'])} file(s) ({kinds}): "
        f"{', '.join(notice['ids'])}; see the mirror-refresh-summary artifact",
        data=rows,
    )
