"""Cold-start reports: the history table in the store, the phase timeline, tables and text.

* ``append_history`` adds a record to ``reports/coldstart.parquet`` in the store (read,
  concat, write back with one atomic ``put_bytes``). Instances that finish together would
  lose each other's rows in a plain read-modify-write, so the append holds a short lease
  (``reports/coldstart.parquet.lock``, created with a conditional put); a lease older than
  ``LEASE_STALE_S`` belongs to a crashed writer and is broken.
* ``render_timeline`` draws where the seconds went: one horizontal bar per phase at its
  real start, seconds on each bar, the target as a vertical line, PASS/MISS/FAIL in the
  title. It is written to a file and to ``reports/coldstart-<timestamp>.png``.
* ``phase_rows`` / ``markdown_summary`` / ``phase_table_text`` feed artifacts and the CLI.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from comfyfleet.errors import (
    ComfyfleetError,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
)
from comfyfleet.files import write_atomic
from comfyfleet.store.base import ObjectStore
from comfyfleet.units import format_bytes
from comfyfleet.warmup.timing import ColdStartRecord, Phase

HISTORY_KEY = "reports/coldstart.parquet"
LEASE_STALE_S = 120.0

_COLORS = {"ok": "#2f6db5", "failed": "#c0392b", "skipped": "#b0b0b0", "pending": "#b0b0b0"}
_VERDICT_COLORS = {"PASS": "#1e7b34", "MISS": "#b35900", "FAIL": "#c0392b"}


# ---------------------------------------------------------------- history table


def read_history(store: ObjectStore, *, key: str = HISTORY_KEY) -> Any:
    """The cold-start history as a pandas DataFrame (empty when none was written yet)."""
    import pandas as pd

    try:
        data = store.get_bytes(key)
    except ObjectNotFound:
        return pd.DataFrame()
    return pd.read_parquet(io.BytesIO(data))


class _Lease:
    """A best-effort exclusive lease on ``key`` made of a conditional put."""

    def __init__(self, store: ObjectStore, key: str, *, wait_s: float) -> None:
        self.store = store
        self.key = key
        self.wait_s = wait_s
        self.held = False

    def __enter__(self) -> _Lease:
        deadline = time.monotonic() + self.wait_s
        body = json.dumps({"since": time.time()}).encode()
        while True:
            try:
                self.store.put_bytes(self.key, body, if_none_match=True)
                self.held = True
                return self
            except PreconditionFailed:
                if self._stale():
                    self.store.delete(self.key)
                    continue
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"the history table is locked by another writer ({self.key})",
                        store=self.store.uri,
                        hint=f"retry in a minute; a lock older than {LEASE_STALE_S:.0f} s "
                        "is broken automatically",
                    ) from None
                time.sleep(0.2)

    def _stale(self) -> bool:
        try:
            since = float(json.loads(self.store.get_bytes(self.key))["since"])
        except ObjectNotFound:
            return False
        except (ValueError, KeyError, TypeError):
            return True  # unreadable lease: nobody we know wrote it
        return time.time() - since > LEASE_STALE_S

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.store.delete(self.key)
            self.held = False


def append_history(
    store: ObjectStore,
    record: ColdStartRecord,
    *,
    key: str = HISTORY_KEY,
    wait_s: float = 30.0,
) -> int:
    """Append ``record`` to the history table in ``store``; returns the number of rows."""
    import pandas as pd

    row = pd.DataFrame([record.to_row()])
    with _Lease(store, f"{key}.lock", wait_s=wait_s):
        old = read_history(store, key=key)
        if len(old) and "record_id" in old and record.record_id in set(old["record_id"]):
            return len(old)  # already appended (a retried task)
        table = row if old.empty else pd.concat([old, row], ignore_index=True)
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        store.put_bytes(key, buf.getvalue(), content_type="application/vnd.apache.parquet")
    return len(table)


# ---------------------------------------------------------------- timeline PNG


def timeline_key(record: ColdStartRecord) -> str:
    """``reports/coldstart-<UTC timestamp>-<id>.png``: sorts by time, never collides."""
    stamp = record.started_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"reports/coldstart-{stamp}-{record.record_id[:8]}.png"


def _bar_label(ph: Phase, total_s: float) -> str:
    text = f"{ph.seconds:.1f} s"
    if total_s > 0:
        text += f" ({100 * ph.seconds / total_s:.0f}%)"
    rate = ph.mb_per_s
    if ph.bytes:
        text += f"  {format_bytes(ph.bytes)}"
    if rate is not None:
        text += f"  {rate:,.0f} MB/s"
    if ph.status == "failed":
        text += "  FAILED"
    return text


def render_timeline(record: ColdStartRecord, path: Path | None = None) -> bytes:
    """Draw the phase timeline as PNG bytes (and write them to ``path`` when given).

    Long on purpose: one figure drawn top to bottom (bars, labels, target line, legend);
    split up, the pieces would pass matplotlib's axes state around for nothing.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    phases = [p for p in record.phases]
    # Chronological from top to bottom; phases that never ran stay in place, greyed.
    phases.sort(key=lambda p: (p.start_s is None, p.start_s or 0.0))
    fig = Figure(figsize=(10, 1.2 + 0.55 * (len(phases) + 1)), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    span = max(record.total_s, record.target_s, 1e-3)
    labels: list[str] = []
    for row, ph in enumerate(phases):
        labels.append(ph.name)
        if ph.status == "skipped" or ph.start_s is None:
            ax.text(
                0,
                row,
                f"  skipped{': ' + ph.note if ph.note else ''}",
                va="center",
                fontsize=8,
                color="#777777",
            )
            continue
        width = max(ph.seconds, span * 0.002)  # a visible sliver for sub-ms phases
        ax.barh(row, width, left=ph.start_s, height=0.6, color=_COLORS[ph.status])
        ax.text(
            ph.start_s + width + span * 0.01,
            row,
            _bar_label(ph, record.total_s),
            va="center",
            fontsize=8,
        )
    total_row = len(phases)
    labels.append("total")
    ax.barh(
        total_row,
        record.total_s,
        left=0,
        height=0.6,
        color=_VERDICT_COLORS[record.verdict],
        alpha=0.85,
    )
    ax.text(
        record.total_s + span * 0.01,
        total_row,
        f"{record.total_s:.1f} s",
        va="center",
        fontsize=9,
        fontweight="bold",
    )
    ax.axvline(record.target_s, color="#444444", linestyle="--", linewidth=1.2)
    ax.text(
        record.target_s,
        -0.9,
        f"target {record.target_s:.0f} s ({record.mode})",
        ha="right",
        va="bottom",
        fontsize=8,
        color="#444444",
    )
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_ylim(total_row + 0.7, -1.1)
    ax.set_xlim(0, span * 1.3)
    ax.set_xlabel("seconds since warm-up start")
    ax.grid(axis="x", color="#e5e5e5")
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    dominant = record.dominant_phase or "-"
    title = (
        f"Cold start {record.verdict}: {record.total_s:.1f} s of {record.target_s:.0f} s  "
        f"(dominant: {dominant})"
    )
    ax.set_title(
        title, loc="left", fontsize=12, fontweight="bold", color=_VERDICT_COLORS[record.verdict]
    )
    subtitle = (
        f"profile {record.profile or '-'} | {record.gpu_name} {record.vram_gb:g} GB | "
        f"{format_bytes(record.bytes_downloaded)} pulled | "
        f"{record.started_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    )
    fig.text(0.01, 0.005, subtitle, fontsize=8, color="#555555", ha="left", va="bottom")
    footer = 0.04
    if record.error:
        error = record.error if len(record.error) <= 140 else record.error[:139] + "..."
        fig.text(
            0.01,
            0.04,
            f"error: {error}",
            fontsize=8,
            color=_VERDICT_COLORS["FAIL"],
            ha="left",
            va="bottom",
        )
        footer = 0.08
    fig.tight_layout(rect=(0, footer, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is not None:
        write_atomic(path, data)
    return data


# ---------------------------------------------------------------- tables and text


def phase_rows(record: ColdStartRecord) -> list[dict[str, Any]]:
    """One dict per phase (+ total) for table artifacts: seconds, share, bytes, MB/s."""
    total = record.total_s or 1e-9
    rows: list[dict[str, Any]] = []
    for ph in record.phases:
        rate = ph.mb_per_s
        rows.append(
            {
                "phase": ph.name,
                "status": ph.status,
                "seconds": round(ph.seconds, 2),
                "share": f"{100 * ph.seconds / total:.0f}%" if ph.seconds else "",
                "bytes": format_bytes(ph.bytes) if ph.bytes else "",
                "MB/s": f"{rate:,.1f}" if rate is not None else "",
                "note": ph.note,
            }
        )
    rows.append(
        {
            "phase": "total",
            "status": record.verdict,
            "seconds": round(record.total_s, 2),
            "share": f"target {record.target_s:.0f} s",
            "bytes": format_bytes(record.bytes_downloaded) if record.bytes_downloaded else "",
            "MB/s": "",
            "note": f"dominant: {record.dominant_phase}" if record.dominant_phase else "",
        }
    )
    return rows


def verdict_line(record: ColdStartRecord) -> str:
    """'cold start PASS: 84.2 s of 300 s (script); dominant phase pull (71%)'."""
    line = (
        f"cold start {record.verdict}: {record.total_s:.1f} s of {record.target_s:.0f} s "
        f"({record.mode})"
    )
    dominant = record.phase(record.dominant_phase) if record.dominant_phase else None
    if dominant is not None and record.total_s > 0:
        line += f"; dominant phase {dominant.name} ({100 * dominant.seconds / record.total_s:.0f}%)"
    return line


def phase_table_text(record: ColdStartRecord) -> str:
    """The phase table as aligned plain text (logs, on-start output)."""
    rows = phase_rows(record)
    cols = ["phase", "status", "seconds", "share", "bytes", "MB/s", "note"]
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def markdown_summary(record: ColdStartRecord, *, links: dict[str, str] | None = None) -> str:
    """A Markdown report: verdict, instance, profile, the phase table, links."""
    lines = [
        f"# Warm-up {record.verdict}: {record.total_s:.1f} s of {record.target_s:.0f} s",
        "",
        f"- **mode**: {record.mode} (target {record.target_s:.0f} s)",
        f"- **profile**: {record.profile or '-'}"
        + (f" ({record.profile_reason})" if record.profile_reason else ""),
        f"- **instance**: {record.host or '-'}"
        + (f" / {record.instance_id}" if record.instance_id else "")
        + f", {record.gpu_count} x {record.gpu_name}, {record.vram_gb:g} GB VRAM, "
        f"{record.cpu_count} CPUs, {format_bytes(record.free_disk_bytes)} free",
        f"- **files**: {record.files_total} in profile, {record.files_placed} placed, "
        f"{record.files_present} already present, {record.files_replaced} replaced; "
        f"{format_bytes(record.bytes_downloaded)} pulled of {format_bytes(record.bytes_total)}",
        f"- **store**: {record.store or '-'}",
        f"- **dominant phase**: {record.dominant_phase or '-'}",
    ]
    if record.error:
        lines.append(f"- **error**: {record.error}")
    lines += [
        "",
        "| phase | status | seconds | share | bytes | MB/s | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in phase_rows(record):
        note = str(r["note"]).replace("|", "\\|")
        lines.append(
            f"| {r['phase']} | {r['status']} | {r['seconds']} | {r['share']} | {r['bytes']} "
            f"| {r['MB/s']} | {note} |"
        )
    for label, url in (links or {}).items():
        lines.append(f"\n[{label}]({url})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- publish


@dataclass
class Published:
    """Where a record went; ``problems`` lists what could not be written (never raised)."""

    history_key: str | None = None
    history_rows: int = 0
    timeline_key: str | None = None
    timeline_path: str | None = None
    timeline_url: str | None = None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "history_key": self.history_key,
            "history_rows": self.history_rows,
            "timeline_key": self.timeline_key,
            "timeline_path": self.timeline_path,
            "timeline_url": self.timeline_url,
            "problems": list(self.problems),
        }


def publish(
    record: ColdStartRecord,
    store: ObjectStore | None,
    *,
    timeline_path: Path | None = None,
    history: bool = True,
    presign_s: int | None = None,
) -> Published:
    """Write the timeline PNG (file + store) and append the history row.

    The store gets the PNG only for a warm-up that ran to the end (``record.ok``) and only
    with ``history``: a failed or refused warm-up (held lock, missing root, disk refused)
    leaves no picture in the store, and ``--no-history`` writes nothing there at all. The
    history row records failures too (with ``history``). ``timeline_path`` is the caller's
    own file and is written either way.

    Reporting must never hide the warm-up's own outcome, so store failures are collected
    in ``problems`` instead of raised. A presigned URL of the PNG (a read capability for
    ``presign_s`` seconds) is made only when asked for: it is a bearer token and ends up
    wherever the result is shown.
    """
    out = Published()
    png: bytes | None = None
    try:
        png = render_timeline(record, None)
    except (OSError, ValueError) as exc:
        out.problems.append(f"timeline not drawn: {exc}")
    if png is not None and timeline_path is not None:
        try:
            write_atomic(timeline_path, png)
            out.timeline_path = str(timeline_path)
        except OSError as exc:  # a bad local path still leaves the store copy below
            out.problems.append(f"timeline not written to {timeline_path}: {exc.strerror}")
    if store is None:
        return out
    if png is not None and history and record.ok:
        key = timeline_key(record)
        try:
            store.put_bytes(key, png, content_type="image/png")
            out.timeline_key = key
            if presign_s:
                out.timeline_url = store.presign_get(key, expires_s=presign_s)
        except ComfyfleetError as exc:
            out.problems.append(f"timeline not stored: {exc.one_line()}")
    if history:
        try:
            out.history_rows = append_history(store, record)
            out.history_key = HISTORY_KEY
        except ComfyfleetError as exc:
            out.problems.append(f"history not appended: {exc.one_line()}")
    return out


def utc_stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
