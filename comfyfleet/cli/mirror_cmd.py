"""``comfyfleet mirror``: copy catalog models from their sources into the store, verified.

Builds :class:`~comfyfleet.mirror.options.MirrorOptions` from the command line and calls
the driver :func:`~comfyfleet.mirror.driver.mirror_models` directly (no Prefect): fast, and
works without a Prefect server. The ``mirror-models`` flow calls the same driver with the
same defaults, adding task retries, artifacts and schedules.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from comfyfleet.catalog import ModelFile
from comfyfleet.cli.common import (
    add_catalog_option,
    add_json_option,
    add_store_options,
    print_json,
)
from comfyfleet.cli.stores import resolve_store
from comfyfleet.errors import ConfigError
from comfyfleet.mirror.driver import (
    MirrorResult,
    MirrorRun,
    mirror_files,
    mirror_models,
    summarize,
)
from comfyfleet.mirror.options import DEFAULT_PARALLEL, DEFAULT_SELECTION_HELP, MirrorOptions
from comfyfleet.mirror.upload import ProgressSubscriber
from comfyfleet.sources import Tokens
from comfyfleet.store.base import ObjectStore
from comfyfleet.units import format_bytes


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "mirror",
        help="copy catalog models from Hugging Face / CivitAI / URLs into the store",
        description="Stream each selected file from its source into the store, verifying "
        "sha256 before it becomes visible; skip files already there with the same sha256; "
        "then update manifest.json. Tokens come from HF_TOKEN and CIVITAI_TOKEN. "
        f"Which files: --only IDs, else --profile NAME; with neither, {DEFAULT_SELECTION_HELP}. "
        "Ctrl-C stops within a second; finished files stay recorded and a rerun resumes.",
    )
    add_catalog_option(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--profile",
        metavar="NAME",
        help=f"mirror the files of this profile (default: {DEFAULT_SELECTION_HELP})",
    )
    which.add_argument(
        "--only",
        metavar="ID",
        nargs="+",
        action="extend",
        help="mirror only these model ids (repeatable)",
    )
    add_store_options(parser)
    parser.add_argument(
        "--force", action="store_true", help="download again even when the store has the file"
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=DEFAULT_PARALLEL,
        metavar="N",
        help=f"files at once (default {DEFAULT_PARALLEL}; memory per file is bounded, "
        "see TransferSettings)",
    )
    add_json_option(parser)
    parser.set_defaults(func=cmd_mirror)


class _BarTask(ProgressSubscriber):
    """One file's bar in a shared rich ``Progress`` (which is thread-safe)."""

    def __init__(self, bars: Progress, label: str) -> None:
        self.bars = bars
        self.label = label
        self.task: TaskID | None = None

    def on_start(self, key: str, total: int | None) -> None:
        self.task = self.bars.add_task(self.label, total=total)

    def on_bytes(self, n: int) -> None:
        if self.task is not None:
            self.bars.advance(self.task, n)

    def on_done(self, key: str) -> None:
        if self.task is not None:
            self.bars.stop_task(self.task)


def progress_bars(stream: TextIO) -> Progress:
    return Progress(
        TextColumn("{task.description}", justify="left"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=False,
    )


def result_table(results: list[MirrorResult]) -> Table:
    table = Table(title=None, show_lines=False)
    for name, justify in (
        ("id", "left"),
        ("status", "left"),
        ("size", "right"),
        ("seconds", "right"),
        ("MB/s", "right"),
        ("sha256", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        speed = r.mb_per_s
        style = {"mirrored": "green", "skipped": "cyan", "failed": "red"}[r.status]
        table.add_row(
            r.id,
            f"[{style}]{r.status}[/{style}]",
            format_bytes(r.bytes) if r.bytes else "-",
            f"{r.seconds:.1f}",
            f"{speed:.1f}" if speed is not None else "-",
            (r.sha256 or "-")[:16],
        )
    return table


def options_from_args(args: argparse.Namespace) -> MirrorOptions:
    """The run the command line asks for (defaults from :class:`MirrorOptions`)."""
    if args.parallel < 1:
        raise ConfigError(
            f"--parallel must be at least 1, got {args.parallel}", hint="use e.g. --parallel 3"
        )
    return MirrorOptions(
        catalog_paths=tuple(args.catalog or ()),
        profile=args.profile,
        ids=tuple(args.only or ()),
        force=args.force,
        parallel=args.parallel,
        store=args.store,
    )


def cmd_mirror(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    store = resolve_store(args)
    show_bars = not args.json and sys.stderr.isatty()
    run = run_mirror(options, store, bars=show_bars)
    report(run, store.uri, as_json=args.json)
    return 0 if run.ok else 1


def run_mirror(
    options: MirrorOptions,
    store: ObjectStore,
    *,
    bars: bool,
    models: list[ModelFile] | None = None,
) -> MirrorRun:
    """The driver, with a progress bar per file on stderr when ``bars``."""
    if not bars:
        return mirror_models(options, store=store, models=models)
    progress = progress_bars(sys.stderr)

    def factory(model: ModelFile) -> ProgressSubscriber:
        return _BarTask(progress, model.id)

    with progress:
        return mirror_models(options, store=store, models=models, progress_for=factory)


def mirror_one(model: ModelFile, store: ObjectStore, *, bars: bool, tokens: Tokens) -> MirrorRun:
    """Mirror a single file that is not in a catalog file yet (``lora add``)."""
    if not bars:
        return mirror_files([model], store, tokens=tokens, max_parallel=1)
    progress = progress_bars(sys.stderr)
    with progress:
        return mirror_files(
            [model],
            store,
            tokens=tokens,
            max_parallel=1,
            progress_for=lambda m: _BarTask(progress, m.id),
        )


def report(run: MirrorRun, store_uri: str, *, as_json: bool) -> None:
    """The result table (or JSON) on stdout, then each failure on one line on stderr."""
    if as_json:
        print_json(
            {
                "store": store_uri,
                "ok": run.ok,
                "summary": summarize(run),
                "manifest_written": run.manifest_written,
                "results": [r.row() for r in run.results],
            }
        )
    else:
        console = Console(file=sys.stdout, width=max(100, Console(file=sys.stdout).width))
        if run.results:
            console.print(result_table(run.results))
        console.print(f"{summarize(run)} -> {store_uri}", highlight=False, markup=False)
    for r in run.failed:
        print(f"failed: {r.id}: {r.error}", file=sys.stderr)
