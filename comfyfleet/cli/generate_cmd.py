"""``comfyfleet generate JOBS_FILE``: run a batch of jobs on one ComfyUI or spread over many.

``--comfy-url`` may be repeated; ``--comfy-token-env NAME`` gives each URL the bearer token
held in that variable (ComfyUIs behind the fleet's gateway); ``--comfy-endpoints FILE`` lists
endpoints with their own names and token references. Tokens never appear on the command line.

Runs the library directly (no Prefect). The ``generate-batch`` flow does the same with
artifacts in the Prefect UI.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from comfyfleet.cli.common import (
    add_catalog_option,
    add_json_option,
    add_store_options,
    non_negative_int,
    positive_float,
    positive_int,
    print_json,
)
from comfyfleet.cli.stores import resolve_store
from comfyfleet.generate.batch import (
    DEFAULT_OPTIONS,
    BatchEvent,
    BatchOptions,
    BatchReport,
    VideoSettings,
    generate_from_file,
)
from comfyfleet.generate.endpoints import endpoint_refs, resolve_endpoints
from comfyfleet.generate.fal import FAL_KEY_ENV, FalSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "generate",
        help="run a table of jobs (CSV/JSONL/Parquet) on ComfyUI, outputs into the store",
        description="Queue every job of JOBS_FILE on ComfyUI, keeping its queue full; store the "
        "outputs as outputs/<batch-id>/<job-id>/<file> and results.parquet. Rerunning the same "
        "batch id skips finished jobs. Jobs with a 'video' column get a video stage: on this "
        "ComfyUI when it has the model and the VRAM, else on fal.ai (FAL_KEY).",
    )
    parser.add_argument(
        "jobs_file", metavar="JOBS_FILE", help="the jobs table (.csv, .jsonl, .parquet)"
    )
    parser.add_argument(
        "--comfy-url",
        action="append",
        default=[],
        metavar="URL",
        help="ComfyUI base URL; repeat it to spread the batch over many ComfyUIs",
    )
    parser.add_argument(
        "--comfy-token-env",
        metavar="NAME",
        help="the variable holding the gateway token for every --comfy-url "
        "(e.g. COMFYFLEET_COMFY_TOKEN); the token itself never goes on the command line",
    )
    parser.add_argument(
        "--comfy-endpoints",
        metavar="FILE",
        help='JSON list of endpoints: [{"url": ..., "name": ..., "token_env"|"token_file": ...}]',
    )
    parser.add_argument(
        "--fleet",
        metavar="NAME",
        help="run on every ready instance of this comfyfleet fleet (endpoints and gateway "
        "token from vast.ai: VAST_API_KEY or --vast-block); adds to any --comfy-url",
    )
    parser.add_argument(
        "--vast-block", metavar="NAME", help="comfyfleet-vast block holding the vast.ai key"
    )
    parser.add_argument(
        "--endpoint-timeout",
        type=positive_float,
        default=DEFAULT_OPTIONS.endpoint_timeout_s,
        metavar="S",
        help="seconds a ComfyUI may stay unreachable before it is dropped and its jobs run "
        "elsewhere (default %(default)s)",
    )
    add_store_options(parser)
    parser.add_argument(
        "--batch-id",
        metavar="ID",
        help="batch folder name (default: <jobs file name>-<hash of its content>)",
    )
    parser.add_argument(
        "--queue-depth",
        type=positive_int,
        default=DEFAULT_OPTIONS.queue_depth,
        metavar="N",
        help="prompts kept queued in ComfyUI at once (default %(default)s: never idle)",
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        default=DEFAULT_OPTIONS.retries,
        metavar="N",
        help="retries per job on connection errors (default %(default)s)",
    )
    parser.add_argument(
        "--comfy-root",
        metavar="DIR",
        help="ComfyUI's folder on this machine: lets LoRAs be pulled into models/loras on demand",
    )
    add_catalog_option(parser)
    fal = parser.add_mutually_exclusive_group()
    fal.add_argument(
        "--fal-fallback",
        dest="fal",
        action="store_true",
        default=DEFAULT_OPTIONS.video.fal,
        help="run video stages on fal.ai when ComfyUI cannot (default; needs FAL_KEY)",
    )
    fal.add_argument("--no-fal", dest="fal", action="store_false", help="never call fal.ai")
    parser.add_argument(
        "--no-local-video",
        dest="local_video",
        action="store_false",
        default=DEFAULT_OPTIONS.video.local,
        help="do not run video stages on ComfyUI (fal.ai only)",
    )
    parser.add_argument(
        "--fal-url", metavar="URL", help="fal queue endpoint (default: $FAL_QUEUE_URL or fal's)"
    )
    add_json_option(parser)
    parser.set_defaults(func=cmd_generate)


def batch_options(args: argparse.Namespace) -> BatchOptions:
    """The batch options the command line gave (the rest keep BatchOptions' defaults)."""
    return BatchOptions(
        batch_id=args.batch_id,
        queue_depth=args.queue_depth,
        retries=args.retries,
        comfy_root=args.comfy_root,
        catalog_paths=tuple(args.catalog or ()),
        endpoint_timeout_s=args.endpoint_timeout,
        video=VideoSettings(
            local=args.local_video,
            fal=args.fal,
            fal_settings=FalSettings(base_url=args.fal_url),
        ),
    )


def cmd_generate(args: argparse.Namespace) -> int:
    options = batch_options(args)
    endpoints = []
    if args.fleet:  # the fleet's ready instances, tokens read from vast.ai here
        from comfyfleet.cli.instances_cmd import fleet_comfy_endpoints

        endpoints = fleet_comfy_endpoints(args.fleet, args.vast_block)
    if args.comfy_url or args.comfy_endpoints or not args.fleet:
        endpoints += resolve_endpoints(
            endpoint_refs(
                args.comfy_url, token_env=args.comfy_token_env, endpoints_file=args.comfy_endpoints
            )
        )
    store = resolve_store(args)
    err = Console(file=sys.stderr)
    if args.fal and not FalSettings().resolved_key() and not args.json:
        err.print(f"[dim]note: {FAL_KEY_ENV} is not set; video stages can only run locally[/]")
    progress = Progress(
        TextColumn("[bold]generate[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=err,
        disable=args.json or not err.is_terminal,
    )
    task = progress.add_task("jobs", total=None, status="")
    failed = 0

    def on_event(event: BatchEvent) -> None:
        nonlocal failed
        if event.kind == "start":
            progress.update(task, total=event.total, completed=event.done, status=event.message)
        elif event.kind == "finished" and event.result is not None:
            failed += event.result.status == "failed"
            progress.update(
                task,
                completed=event.done,
                status=f"{event.result.id} {event.result.status}"
                + (f" ({failed} failed)" if failed else ""),
            )
        elif event.kind == "retry":
            progress.update(task, status=f"{event.job_id} retry: {event.message[:60]}")
        elif event.kind == "joined" and not args.json:
            err.print(f"{event.endpoint}: {event.message}")

    with progress:
        report = generate_from_file(
            args.jobs_file, options, endpoints=endpoints, store=store, on_event=on_event
        )
    if args.json:
        print_json(report_json(report))
    else:
        print_report(report)
    return 0 if report.ok else 1


def report_json(report: BatchReport) -> dict[str, Any]:
    return {
        "batch_id": report.batch_id,
        "store": report.store_uri,
        "results": report.results_key,
        "summary": report.summary_key,
        "counts": report.counts,
        "wall_seconds": round(report.wall_seconds, 3),
        "exec_seconds": round(report.exec_seconds, 3),
        "utilisation": round(report.utilisation, 4),
        "stopped": report.stopped or None,
        "endpoints": {name: {"dropped": why or None} for name, why in report.endpoints.items()},
        "jobs": report.rows(),
    }


def print_report(report: BatchReport) -> None:
    console = Console()
    table = Table(title=f"batch {report.batch_id}", title_justify="left")
    many = len(report.endpoints) > 1
    columns = ["job", "status", "seconds", "wait", "outputs", "video", "try", "error"]
    for column in columns[:1] + (["endpoint"] if many else []) + columns[1:]:
        table.add_column(column, overflow="fold")
    styles = {"ok": "green", "failed": "red", "skipped": "dim"}
    for row, result in zip(report.table(), report.results, strict=True):
        table.add_row(
            row["id"],
            *([result.endpoint] if many else []),
            f"[{styles[row['status']]}]{row['status']}[/]",
            f"{row['seconds']:.2f}",
            f"{row['queue_wait']:.2f}",
            row["outputs"],
            row["video"],
            str(row["attempt"]),
            row["error"],
        )
    console.print(table)
    c = report.counts
    console.print(
        f"{c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped; "
        f"{report.wall_seconds:.1f} s wall, ComfyUI busy {report.utilisation:.0%}; "
        f"results: {report.store_uri}/{report.results_key}"
    )
    for name, why in report.endpoints.items():
        if why:
            console.print(f"[yellow]endpoint {name} dropped:[/] {why}")
    if report.stopped:
        console.print(f"[red]stopped early:[/] {report.stopped}")
