"""Prefect flow ``generate-batch``: a jobs table on one ComfyUI or spread over many, outputs
into the store.

Thin on purpose: one task runs :func:`comfyfleet.generate.batch.generate_from_file`, which keeps
ComfyUI's queue full with its own threads (a Prefect task per job would add engine overhead
between prompts and make ComfyUI idle). Jobs reach the UI as a throttled progress artifact
while the batch runs, then as a table artifact (one row per job) and a markdown summary.

The flow builds :class:`~comfyfleet.generate.batch.BatchOptions` from its parameters, as the
CLI does from its arguments, and runs the same driver. Retries have one owner (errors.py): the
engine resubmits a job after a transient error, ``retries`` times; the task itself does not
retry, or job attempts would multiply. A rerun with the same batch id skips finished jobs.

Endpoints travel as token-free references (``{"url", "name", "token_env"|"token_file"}``,
:mod:`comfyfleet.generate.endpoints`): tokens are read inside the task, on the worker, and
never become flow parameters.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from comfyfleet.errors import ConfigError
from comfyfleet.generate.batch import (
    DEFAULT_OPTIONS,
    BatchEvent,
    BatchOptions,
    BatchReport,
    VideoSettings,
    default_batch_id,
    generate_from_file,
)
from comfyfleet.generate.endpoints import (
    ComfyEndpoint,
    check_unique,
    endpoint_from_ref,
    endpoint_refs,
)
from comfyfleet.generate.fal import FalSettings
from flows._common import (
    ProgressThrottle,
    artifact_key,
    load_tokens,
    open_flow_store,
)


def _artifact_key(prefix: str, batch_id: str) -> str:
    return artifact_key(prefix, batch_id, fallback="batch")


# A reference's key naming the comfyfleet-comfyui block it came from (flows only: the block's
# token is read from it inside the task, so no reference ever carries a token).
BLOCK_REF_KEY = "block"


def _endpoint_refs(
    comfy_url: str | list[str] | None,
    comfy_block: str | None,
    comfy_token_env: str | None,
    comfy_endpoints: str | None,
) -> list[dict[str, str]]:
    urls = [comfy_url] if isinstance(comfy_url, str) else list(comfy_url or [])
    if not urls and not comfy_endpoints and not comfy_block:
        raise ConfigError(
            "generate-batch needs comfy_url, comfy_block or comfy_endpoints",
            hint="pass the ComfyUI base URL(s), the name of a comfyfleet-comfyui block, "
            "or an endpoints file",
        )
    refs = (
        endpoint_refs(urls, token_env=comfy_token_env, endpoints_file=comfy_endpoints)
        if urls or comfy_endpoints
        else []
    )
    if comfy_block:
        from blocks import ComfyUIEndpoint, load

        ref = {"url": str(load(ComfyUIEndpoint, comfy_block).url), BLOCK_REF_KEY: comfy_block}
        if comfy_token_env:
            ref["token_env"] = comfy_token_env  # used when the block holds no token
        refs.append(ref)
    return refs


def _resolve(refs: list[dict[str, str]]) -> list[ComfyEndpoint]:
    """The endpoints of ``refs``, tokens read here: a block's own token first, else the
    reference's ``token_env``/``token_file``."""
    endpoints = []
    for ref in refs:
        plain = {k: v for k, v in ref.items() if k != BLOCK_REF_KEY}
        token = None
        if BLOCK_REF_KEY in ref:
            from blocks import ComfyUIEndpoint, load

            token = load(ComfyUIEndpoint, ref[BLOCK_REF_KEY]).token
            if token is not None and not token.get_secret_value():
                token = None
        if token is not None:
            plain.pop("token_env", None)
            endpoint = replace(endpoint_from_ref(plain), token=token)
        else:
            endpoint = endpoint_from_ref(plain)
        endpoints.append(endpoint)
    check_unique(endpoints)
    return endpoints


def _fal_key(fal_block: str | None) -> str | None:
    if not fal_block:
        return None  # FalSettings falls back to $FAL_KEY
    from blocks import FalCredentials, load

    return str(load(FalCredentials, fal_block).key.get_secret_value())


class _Progress:
    """Throttled progress artifact: at most every 2 % or 15 s, never failing the batch."""

    def __init__(self, key: str) -> None:
        self._lock = threading.Lock()
        self._id: Any = None
        self._key = key
        self._throttle = ProgressThrottle()
        self._broken = False

    def __call__(self, event: BatchEvent) -> None:
        if event.kind not in ("start", "finished") or self._broken or event.total <= 0:
            return
        pct = 100.0 * event.done / event.total
        with self._lock:
            if not self._throttle.due(pct, force=event.done >= event.total):
                return
            try:
                if self._id is None:
                    self._id = create_progress_artifact(
                        progress=pct, key=self._key, description="jobs finished (%)"
                    )
                else:
                    update_progress_artifact(artifact_id=self._id, progress=pct)
            except Exception as exc:  # noqa: BLE001 - the UI is a nicety, the batch is not
                self._broken = True
                get_run_logger().warning("progress artifact disabled: %s", exc)


@task(name="run-batch", cache_policy=NO_CACHE, retries=0)
def run_batch_task(
    jobs_file: str,
    endpoints: list[dict[str, str]],
    options: BatchOptions,
    store_uri: str | None,
    store_block: str | None,
    fal_block: str | None,
    tokens_block: str | None,
) -> BatchReport:
    """The batch, by the same driver as the CLI, over ``endpoints`` (token-free references,
    tokens read here). No task retries: the engine resubmits jobs (``options.retries``), and a
    rerun of the flow resumes the batch."""
    logger = get_run_logger()
    store = open_flow_store(store_uri, store_block)
    batch = options.batch_id or default_batch_id(jobs_file)
    if fal_block and options.video.fal:
        # The key is read here, inside the task, so it never travels as a parameter.
        fal_settings = replace(options.video.fal_settings, key=_fal_key(fal_block))
        options = replace(options, video=replace(options.video, fal_settings=fal_settings))
    progress = _Progress(_artifact_key("generate-progress", batch))

    def on_event(event: BatchEvent) -> None:
        progress(event)
        if event.kind == "finished" and event.result is not None and event.result.error:
            logger.warning("job %s %s: %s", event.job_id, event.result.status, event.result.error)

    report = generate_from_file(
        jobs_file,
        replace(options, batch_id=batch),
        endpoints=_resolve(endpoints),
        store=store,
        tokens=load_tokens(tokens_block),
        on_event=on_event,
    )
    c = report.counts
    for name, why in report.endpoints.items():
        if why:
            logger.warning("endpoint %s dropped: %s", name, why)
    logger.info(
        "batch %s: %d ok, %d failed, %d skipped in %.1f s (ComfyUI busy %.0f%%)",
        report.batch_id,
        c["ok"],
        c["failed"],
        c["skipped"],
        report.wall_seconds,
        100 * report.utilisation,
    )
    return report


@flow(name="generate-batch")
def generate_batch(
    jobs_file: str,
    comfy_url: str | list[str] | None = None,
    comfy_block: str | None = None,
    comfy_token_env: str | None = None,
    comfy_endpoints: str | None = None,
    store: str | None = None,
    store_block: str | None = None,
    batch_id: str | None = None,
    queue_depth: int = DEFAULT_OPTIONS.queue_depth,
    retries: int = DEFAULT_OPTIONS.retries,
    comfy_root: str | None = None,
    catalog: list[str] | None = None,
    fal_fallback: bool = DEFAULT_OPTIONS.video.fal,
    local_video: bool = DEFAULT_OPTIONS.video.local,
    fal_block: str | None = None,
    fal_url: str | None = None,
    tokens_block: str | None = None,
    ready_timeout_s: float = DEFAULT_OPTIONS.ready_timeout_s,
    endpoint_timeout_s: float = DEFAULT_OPTIONS.endpoint_timeout_s,
) -> dict[str, Any]:
    """Run JOBS_FILE on ComfyUI (``comfy_url``: one URL or a list, a ``comfyfleet-comfyui``
    block, or ``comfy_endpoints``: an endpoints JSON file; ``comfy_token_env`` names the
    variable holding the gateway token for the URLs), outputs to
    the store (URI or ``comfyfleet-store`` block); video stages fall back to fal.ai
    (key from a ``comfyfleet-fal-credentials`` block or ``$FAL_KEY``). LoRAs a job names by
    catalog id or link are pulled into ``comfy_root`` (mirrored first with the tokens of a
    ``comfyfleet-source-tokens`` block, else ``$HF_TOKEN``/``$CIVITAI_TOKEN``)."""
    refs = _endpoint_refs(comfy_url, comfy_block, comfy_token_env, comfy_endpoints)
    options = BatchOptions(
        batch_id=batch_id,
        queue_depth=queue_depth,
        retries=retries,
        ready_timeout_s=ready_timeout_s,
        endpoint_timeout_s=endpoint_timeout_s,
        comfy_root=comfy_root,
        catalog_paths=tuple(catalog or ()),
        video=VideoSettings(
            local=local_video, fal=fal_fallback, fal_settings=FalSettings(base_url=fal_url)
        ),
    )
    report = run_batch_task(jobs_file, refs, options, store, store_block, fal_block, tokens_block)
    create_table_artifact(
        table=report.table(),
        key=_artifact_key("generate-jobs", report.batch_id),
        description=f"jobs of batch {report.batch_id}",
    )
    create_markdown_artifact(
        markdown=report.markdown(),
        key=_artifact_key("generate-summary", report.batch_id),
        description=f"summary of batch {report.batch_id}",
    )
    summary = {
        "batch_id": report.batch_id,
        "counts": report.counts,
        "wall_seconds": round(report.wall_seconds, 3),
        "utilisation": round(report.utilisation, 4),
        "results": f"{report.store_uri}/{report.results_key}",
        "stopped": report.stopped or None,
        "endpoints": {name: why or None for name, why in report.endpoints.items()},
    }
    if not report.ok:
        failed = [r.id for r in report.results if r.status == "failed"]
        raise RuntimeError(
            f"batch {report.batch_id}: {len(failed)} job(s) failed "
            f"({', '.join(failed[:10])}{' ...' if len(failed) > 10 else ''}); "
            "rerun the flow with the same batch_id to retry only those"
        )
    return summary
