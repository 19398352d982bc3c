"""``comfyfleet warmup`` (mirror -> ComfyUI on this instance, timed) and ``comfyfleet bake``.

Exit codes: 0 done (target met, or missed without ``--fail-on-target``); 1 the warm-up
failed; 2 bad input (``ConfigError``); 3 done but the cold-start target was missed and
``--fail-on-target`` was given. ``--json`` prints the result as one JSON document and
nothing else on stdout; the progress bar and messages go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from comfyfleet.catalog import load_catalog
from comfyfleet.cli.common import (
    add_catalog_option,
    add_json_option,
    add_store_options,
    print_json,
)
from comfyfleet.cli.stores import resolve_store
from comfyfleet.config import env
from comfyfleet.store.base import ObjectStore
from comfyfleet.units import format_bytes
from comfyfleet.warmup.driver import WarmupResult, bake, needs_store, open_catalog, warm_up
from comfyfleet.warmup.options import add_arguments, from_namespace
from comfyfleet.warmup.reports import phase_rows, verdict_line

EXIT_TARGET_MISSED = 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "warmup",
        help="pull a profile from the mirror into ComfyUI, start it, time the cold start",
        description="Warm up this instance: pick a profile for its GPU and disk, pull the "
        "models from the store (sha256-verified, resumable), bring ComfyUI up with the models "
        "listed, optionally run a first prompt, and report each phase against the target "
        "(300 s script, 120 s baked). Exit 0 ok, 1 failed, 2 bad input, 3 target missed "
        "(only with --fail-on-target).",
    )
    add_store_options(p)
    add_catalog_option(p)
    add_arguments(p)  # every warm-up option, from WarmupOptions
    add_json_option(p)
    p.set_defaults(func=cmd_warmup)

    b = sub.add_parser(
        "bake",
        help="pull a profile with full verification and write a baked manifest (docker build)",
        description="Used inside `docker build` (see `comfyfleet render dockerfile`): pull "
        "PROFILE into --models-dir, re-verify every file, and write the baked manifest that "
        "`comfyfleet warmup --mode baked` checks at start.",
    )
    add_store_options(b)
    add_catalog_option(b)
    b.add_argument("--profile", required=True, metavar="NAME")
    b.add_argument("--models-dir", type=Path, required=True, metavar="DIR")
    b.add_argument("--manifest-out", type=Path, required=True, metavar="PATH")
    add_json_option(b)
    b.set_defaults(func=cmd_bake)


# ---------------------------------------------------------------- progress


class RichProgress:
    """Phase lines and a bytes bar on stderr (``WarmupProgress``)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: Any = None
        self._lock = threading.Lock()

    def phase(self, name: str) -> None:
        self._stop()
        self.console.print(f"[bold]>[/bold] {name}", highlight=False)

    def plan(self, files: int, total_bytes: int) -> None:
        self._stop()
        if files == 0:
            return
        self._progress = Progress(
            TextColumn(f"  pulling {files} file(s)"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task("pull", total=total_bytes)
        self._progress.start()

    def advance(self, n: int) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.advance(self._task, n)

    def _stop(self) -> None:
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None

    def close(self) -> None:
        self._stop()


# ---------------------------------------------------------------- helpers


def _store_given(args: argparse.Namespace) -> bool:
    return bool(args.store or args.store_block or env("COMFYFLEET_STORE"))


def print_phase_table(result: WarmupResult, console: Console) -> None:
    """The phase table, the verdict and where things are (for people)."""
    record = result.record
    table = Table(title=None, show_edge=False, pad_edge=False)
    for col, justify in (
        ("phase", "left"),
        ("status", "left"),
        ("seconds", "right"),
        ("share", "right"),
        ("bytes", "right"),
        ("MB/s", "right"),
        ("note", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in phase_rows(record):
        table.add_row(
            *(str(row[c]) for c in ("phase", "status", "seconds", "share", "bytes", "MB/s", "note"))
        )
    console.print(table)
    style = {"PASS": "green", "MISS": "yellow", "FAIL": "red"}[record.verdict]
    console.print(f"[{style}]{verdict_line(record)}[/{style}]", highlight=False)
    if result.profile is not None:
        console.print(
            f"profile {result.profile.name}: {result.profile.reason}; "
            f"{record.files_total} files ({format_bytes(record.bytes_total)}), "
            f"{record.files_placed} placed, {record.files_replaced} replaced, "
            f"{record.files_present} already present",
            highlight=False,
        )
    if result.comfy is not None and result.comfy.ready:
        started = f", started pid {result.comfy.pid}" if result.comfy.started else ""
        console.print(
            f"ComfyUI {result.comfy.version or ''} at {result.comfy.url}{started}: "
            f"{len(result.comfy.models_listed)} model file(s) listed",
            highlight=False,
        )
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    pub = result.published
    if pub is not None:
        if pub.timeline_path:
            console.print(f"timeline: {pub.timeline_path}", highlight=False)
        if pub.timeline_key:
            console.print(f"timeline in store: {pub.timeline_key}", highlight=False)
        if pub.history_key:
            console.print(f"history: {pub.history_key} ({pub.history_rows} rows)", highlight=False)
        for problem in pub.problems:
            console.print(f"[yellow]report:[/yellow] {problem}", highlight=False)


# ---------------------------------------------------------------- commands


def cmd_warmup(args: argparse.Namespace) -> int:
    options = from_namespace(args)
    given = _store_given(args)
    store: ObjectStore | None = (
        resolve_store(args) if needs_store(options, store_given=given) else None
    )
    catalog = open_catalog(args.catalog, options)
    err = Console(stderr=True)
    progress = RichProgress(err)
    try:
        result = warm_up(options, store=store, catalog=catalog, progress=progress)
    finally:
        progress.close()
    if args.json:
        print_json(result.to_dict())
    else:
        out = Console(highlight=False)
        if not out.is_terminal:
            out = Console(highlight=False, width=120)  # logs: no wrapping at 80 columns
        print_phase_table(result, out)
    result.raise_for_failure()  # the CLI's main turns it into error/hint and exit 1 or 2
    if options.fail_on_target and not result.passed:
        print(
            f"error: {verdict_line(result.record)}\n"
            "hint: see the phase table for where the time went",
            file=sys.stderr,
        )
        return EXIT_TARGET_MISSED
    return 0


def cmd_bake(args: argparse.Namespace) -> int:
    store = resolve_store(args)
    catalog = load_catalog(args.catalog)
    err = Console(stderr=True)
    progress = RichProgress(err)
    try:
        result = bake(
            store=store,
            catalog=catalog,
            profile=args.profile,
            models_dir=args.models_dir,
            manifest_out=args.manifest_out,
            progress=progress,
        )
    finally:
        progress.close()
    data = result.to_dict()
    if args.json:
        print_json(data)
    else:
        print(
            f"baked profile {result.profile.name}: {data['files']} files "
            f"({format_bytes(result.profile.total_bytes)}) in {result.models_dir}, "
            f"{format_bytes(data['bytes_downloaded'])} pulled, every file sha256-verified; "
            f"manifest {result.manifest_path}"
        )
    return 0
