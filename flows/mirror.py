"""Prefect flows ``mirror-models`` and ``mirror-refresh``: thin wrappers over the library.

``mirror-models`` runs one task per file (:func:`comfyfleet.mirror.driver.mirror_file`) on a
bounded ``ThreadPoolTaskRunner``; parts, chunks and hashing stay inside the library. A
task retries only transient errors (connection drops, 5xx, 429, store hiccups) with
exponential backoff and jitter; a retry resumes what the store already holds. Bytes reach
the UI as one progress artifact for the whole run (updated at most every 2 % or 15 s),
results as a table artifact and a markdown summary. The manifest is written once, after
every file, with every mirrored and skipped file; then the flow fails if any file failed.

``mirror-refresh`` asks every source what it holds now and reports changes (table +
markdown); it never replaces a file.

Parameters are names and URIs only: the store (``store`` URI or ``store_block`` name) and
the tokens (``tokens_block`` name of a ``comfyfleet-source-tokens`` block, else
``HF_TOKEN``/``CIVITAI_TOKEN`` from the environment) are opened inside each task, so no
client and no secret is ever a parameter.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from comfyfleet.catalog import ModelFile, load_catalog
from comfyfleet.errors import ComfyfleetError, ConfigError
from comfyfleet.mirror.driver import (
    MirrorResult,
    failed_result,
    manifest_entries,
    mirror_file,
)
from comfyfleet.mirror.refresh import UpstreamChange, check_upstream
from comfyfleet.mirror.upload import ProgressSubscriber, TransferSettings
from comfyfleet.store.manifest import ManifestEntry, read_manifest, update_manifest
from comfyfleet.units import format_bytes
from flows._common import ProgressThrottle, load_tokens, open_flow_store, transient_only

RESULTS_KEY = "mirror-results"
SUMMARY_KEY = "mirror-summary"
PROGRESS_KEY = "mirror-progress"
REFRESH_KEY = "mirror-refresh-changes"
REFRESH_SUMMARY_KEY = "mirror-refresh-summary"


def select_models(
    catalog_paths: list[str] | None, profile: str | None, ids: list[str] | None
) -> list[ModelFile]:
    """``ids`` when given (the profile is then ignored), else the profile's files."""
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
        self.started: dict[str, float] = {}
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

    def begin(self, model_id: str) -> float:
        with self._lock:
            return self.started.setdefault(model_id, time.monotonic())

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


# Progress of the runs in this process, by a key passed to the tasks as plain data.
_RUNS: dict[str, RunProgress] = {}


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
def mirror_file_task(
    model: ModelFile,
    store: str | None,
    store_block: str | None,
    tokens_block: str | None,
    force: bool,
    progress_key: str,
    settings: TransferSettings | None = None,
    manifest: Mapping[str, ManifestEntry] | None = None,
) -> MirrorResult:
    """Mirror one file; raises its error so that Prefect retries transient ones."""
    run = _RUNS.get(progress_key)
    if run is not None:
        run.begin(model.id)
    result = mirror_file(
        model,
        open_flow_store(store, store_block),
        tokens=load_tokens(tokens_block),
        settings=settings,
        force=force,
        progress=_FileProgress(run, model.id) if run is not None else None,
        manifest=manifest,
    )
    if run is not None:
        run.finish(model.id, result.bytes)
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


@task(
    name="update-manifest",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=transient_only,
    cache_policy=NO_CACHE,
)
def update_manifest_task(
    results: list[MirrorResult], store: str | None, store_block: str | None
) -> int:
    """One atomic manifest write with every mirrored and skipped file."""
    entries = manifest_entries(results)
    if entries:
        update_manifest(open_flow_store(store, store_block), entries)
    return len(entries)


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
    profile: str | None = "minimal",
    ids: list[str] | None = None,
    store: str | None = None,
    store_block: str | None = None,
    force: bool = False,
    max_parallel: int = 3,
    tokens_block: str | None = None,
) -> list[dict[str, Any]]:
    """Mirror the catalog's files (``ids``, else ``profile``) into the store, verified.

    Args:
        catalog_paths: catalog files ("builtin" = the shipped one); default the built-in.
        profile: the profile to mirror (ignored when ``ids`` are given); None = every file.
        ids: only these model ids.
        store: the store URI (``s3://bucket/prefix``, a path); default ``$COMFYFLEET_STORE``.
        store_block: name of a ``comfyfleet-store`` block (wins over ``store``).
        force: download again even when the store holds the file.
        max_parallel: files at once (each file's memory is bounded, see TransferSettings).
        tokens_block: name of a ``comfyfleet-source-tokens`` block; default the environment.
    """
    logger = get_run_logger()
    if max_parallel < 1:
        raise ConfigError(f"max_parallel must be at least 1, got {max_parallel}")
    began = time.monotonic()
    models = select_models(catalog_paths, profile, ids)
    flow_store = open_flow_store(store, store_block)  # fail fast on a bad store
    store_uri = flow_store.uri
    # Read once for every file's skip check, as comfyfleet.mirror.driver.mirror_models does.
    manifest = read_manifest(flow_store).by_key()
    logger.info("mirroring %d file(s) into %s", len(models), store_uri)
    progress = RunProgress(models)
    progress.start_artifact()
    key = uuid.uuid4().hex
    _RUNS[key] = progress
    try:
        # A runner of this run's own size: max_parallel is a parameter, the decorator's is not.
        pool: ThreadPoolTaskRunner[MirrorResult] = ThreadPoolTaskRunner(max_workers=max_parallel)
        with pool as runner:
            futures = [
                runner.submit(
                    mirror_file_task,
                    {
                        "model": model,
                        "store": store,
                        "store_block": store_block,
                        "tokens_block": tokens_block,
                        "force": force,
                        "progress_key": key,
                        "manifest": manifest,
                    },
                )
                for model in models
            ]
            results: list[MirrorResult] = []
            for model, future in zip(models, futures, strict=True):
                outcome = future.result(raise_on_failure=False)
                if isinstance(outcome, MirrorResult):
                    results.append(outcome)
                    continue
                started = progress.started.get(model.id, began)
                exc = outcome if isinstance(outcome, BaseException) else RuntimeError(outcome)
                result = failed_result(model, exc, time.monotonic() - started)
                logger.error("failed %s: %s", model.key, result.error)
                progress.finish(model.id, 0)
                results.append(result)
    finally:
        _RUNS.pop(key, None)
    progress.publish(force=True)
    written = update_manifest_task(results, store, store_block)
    seconds = time.monotonic() - began
    create_table_artifact(
        table=results_table(results), key=RESULTS_KEY, description=f"mirror into {store_uri}"
    )
    create_markdown_artifact(
        markdown=summary_markdown(results, store_uri, seconds), key=SUMMARY_KEY
    )
    failed = [r for r in results if r.status == "failed"]
    logger.info(
        "%d mirrored, %d skipped, %d failed; manifest: %d entries written",
        sum(r.status == "mirrored" for r in results),
        sum(r.status == "skipped" for r in results),
        len(failed),
        written,
    )
    if failed:
        raise ComfyfleetError(
            f"{len(failed)} of {len(results)} file(s) failed to mirror: "
            + "; ".join(f"{r.id}: {r.error}" for r in failed),
            hint="see the mirror-results artifact; a rerun skips finished files and resumes "
            "unfinished uploads",
        )
    return [r.row() for r in results]


# ---------------------------------------------------------------- mirror-refresh


@task(name="check-upstream", cache_policy=NO_CACHE)
def check_upstream_task(
    models: list[ModelFile], store: str | None, store_block: str | None, tokens_block: str | None
) -> list[UpstreamChange]:
    return check_upstream(models, open_flow_store(store, store_block), load_tokens(tokens_block))


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


@flow(name="mirror-refresh")
def mirror_refresh_flow(
    catalog_paths: list[str] | None = None,
    profile: str | None = None,
    ids: list[str] | None = None,
    store: str | None = None,
    store_block: str | None = None,
    tokens_block: str | None = None,
) -> list[dict[str, Any]]:
    """Re-check upstream for the catalog's files (default: all) and report what changed.

    Reports new HF commits on unpinned refs, newer files on ``main`` for pinned commits,
    new CivitAI versions of tracked models, and changed sizes/hashes; replaces nothing.
    """
    models = select_models(catalog_paths, profile, ids)
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
    return [c.row() for c in changes]
