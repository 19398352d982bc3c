"""Batch results: one row per job (``results.parquet``), the report and its summary, and
where a job's outputs go in the store.

- :class:`JobResult` is one row; :class:`ResultsLedger` keeps ``outputs/<batch>/results.parquet``
  up to date (rewritten atomically, coalesced across threads) so a killed batch resumes;
- :class:`BatchReport` is what a batch returns: counts, utilisation, a table for terminals and
  artifacts, and the markdown written as ``outputs/<batch>/summary.md``;
- :func:`store_outputs` fetches a prompt's files from ComfyUI into ``outputs/<batch>/<job>/``.
"""

from __future__ import annotations

import io
import mimetypes
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from comfyfleet.errors import ComfyfleetError, ConfigError
from comfyfleet.store.base import ObjectStore

if TYPE_CHECKING:
    from comfyfleet.comfy.tracking import OutputFile

Status = Literal["ok", "failed", "skipped"]

RESULTS_FILE = "results.parquet"
SUMMARY_FILE = "summary.md"


class ComfyOutputs(Protocol):
    """What storing outputs needs from ComfyUI: ``GET /view``."""

    def fetch_output(self, f: OutputFile) -> bytes: ...


@dataclass
class JobResult:
    """One row of the results table.

    ``seconds``: ComfyUI execution time of the job's prompts; ``queue_wait``: time between
    submission and the start of execution (ours: submitted -> finished minus executing);
    ``wall_seconds``: first submission to the last output stored; ``video_path``: ``local``,
    ``fal`` or empty; ``attempt``: submissions made (1 = first try); ``endpoint``: the
    ComfyUI that ran it (of a failed job: the last one tried, empty if none).
    """

    id: str
    status: Status
    workflow: str = ""
    seconds: float = 0.0
    queue_wait: float = 0.0
    wall_seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    video_path: str = ""
    video_seconds: float = 0.0
    error: str = ""
    prompt_id: str = ""
    attempt: int = 0
    fingerprint: str = ""
    finished_at: str = ""
    loras: list[str] = field(default_factory=list)
    endpoint: str = ""

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "workflow": self.workflow,
            "seconds": round(self.seconds, 4),
            "queue_wait": round(self.queue_wait, 4),
            "wall_seconds": round(self.wall_seconds, 4),
            "outputs": list(self.outputs),
            "video_path": self.video_path,
            "video_seconds": round(self.video_seconds, 4),
            "error": self.error,
            "prompt_id": self.prompt_id,
            "attempt": self.attempt,
            "fingerprint": self.fingerprint,
            "finished_at": self.finished_at,
            "loras": list(self.loras),
            "endpoint": self.endpoint,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> JobResult:
        status = str(row.get("status") or "failed")
        return cls(
            id=str(row["id"]),
            status=status if status in ("ok", "failed", "skipped") else "failed",  # type: ignore[arg-type]
            workflow=str(row.get("workflow") or ""),
            seconds=float(row.get("seconds") or 0.0),
            queue_wait=float(row.get("queue_wait") or 0.0),
            wall_seconds=float(row.get("wall_seconds") or 0.0),
            outputs=[str(k) for k in (row.get("outputs") or [])],
            video_path=str(row.get("video_path") or ""),
            video_seconds=float(row.get("video_seconds") or 0.0),
            error=str(row.get("error") or ""),
            prompt_id=str(row.get("prompt_id") or ""),
            attempt=int(row.get("attempt") or 0),
            fingerprint=str(row.get("fingerprint") or ""),
            finished_at=str(row.get("finished_at") or ""),
            loras=[str(x) for x in (row.get("loras") or [])],
            endpoint=str(row.get("endpoint") or ""),
        )


@dataclass
class BatchReport:
    """The outcome of ``run_batch``; ``results`` follow the jobs' order."""

    batch_id: str
    store_uri: str
    results: list[JobResult]
    wall_seconds: float
    results_key: str
    summary_key: str
    stopped: str = ""
    # name -> "" while it served, else why it was dropped
    endpoints: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "failed": 0, "skipped": 0}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    @property
    def ok(self) -> bool:
        return not any(r.status == "failed" for r in self.results)

    @property
    def exec_seconds(self) -> float:
        """ComfyUI execution seconds of the jobs run in this call."""
        return sum(r.seconds for r in self.results if r.status != "skipped")

    @property
    def utilisation(self) -> float:
        """Execution seconds / wall seconds: 1.0 means ComfyUI never idled."""
        return self.exec_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.results]

    def table(self) -> list[dict[str, Any]]:
        """Flat rows for artifacts and terminals (outputs joined, fingerprint left out)."""
        rows = []
        for r in self.results:
            rows.append(
                {
                    "id": r.id,
                    "status": r.status,
                    "seconds": round(r.seconds, 2),
                    "queue_wait": round(r.queue_wait, 2),
                    "outputs": ", ".join(k.rsplit("/", 1)[-1] for k in r.outputs),
                    "video": r.video_path,
                    "attempt": r.attempt,
                    "error": r.error,
                }
            )
        return rows

    def markdown(self) -> str:
        c = self.counts
        lines = [
            f"# Batch {self.batch_id}",
            "",
            f"- store: `{self.store_uri}`, results: `{self.results_key}`",
            f"- jobs: {len(self.results)} — ok {c['ok']}, failed {c['failed']}, "
            f"skipped {c['skipped']} (done in an earlier run)",
            f"- wall time: {self.wall_seconds:.2f} s; ComfyUI execution: "
            f"{self.exec_seconds:.2f} s; utilisation {self.utilisation:.1%}",
        ]
        videos = [r for r in self.results if r.video_path]
        if videos:
            local = sum(1 for r in videos if r.video_path == "local")
            lines.append(f"- video stages: {local} local, {len(videos) - local} on fal.ai")
        if len(self.endpoints) > 1 or any(self.endpoints.values()):
            ran: dict[str, int] = {}
            for r in self.results:
                if r.status == "ok":
                    ran[r.endpoint] = ran.get(r.endpoint, 0) + 1
            for name, dropped in self.endpoints.items():
                state = f"; **dropped**: {dropped}" if dropped else ""
                lines.append(f"- endpoint `{name}`: {ran.get(name, 0)} job(s) run{state}")
        if self.stopped:
            lines.append(f"- **stopped early**: {self.stopped}")
        failed = [r for r in self.results if r.status == "failed"]
        if failed:
            lines += ["", "## Failed jobs", "", "| job | attempts | error |", "|---|---|---|"]
            for r in failed:
                lines.append(f"| {r.id} | {r.attempt} | {_md_cell(r.error)} |")
        return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:300]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def describe(exc: BaseException) -> str:
    """An error as one line for a results row."""
    if isinstance(exc, ComfyfleetError):
        return exc.one_line()
    return f"{type(exc).__name__}: {exc}"


def safe_name(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "output"
    return base[:200]


# ---------------------------------------------------------------- results ledger


class ResultsLedger:
    """``outputs/<batch>/results.parquet``: one row per job, rewritten atomically on change.

    Writes are coalesced: while one thread writes, rows recorded meanwhile are picked up by
    its next pass instead of each starting a write of its own. A row recorded just before a
    crash may thus be missing; its job is then simply run again (its folder is cleared
    first), so nothing is lost or duplicated.
    """

    def __init__(self, store: ObjectStore, batch_id: str) -> None:
        self.store = store
        self.batch_id = batch_id
        self.key = f"outputs/{batch_id}/{RESULTS_FILE}"
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._rows: dict[str, dict[str, Any]] = {}
        self._version = 0
        self._written = 0
        for row in read_results(store, batch_id):
            self._rows[str(row["id"])] = row

    def previous(self, job_id: str) -> JobResult | None:
        row = self._rows.get(job_id)
        return JobResult.from_row(row) if row is not None else None

    def record(self, result: JobResult) -> None:
        with self._lock:
            self._rows[result.id] = result.row()
            self._version += 1
        self.flush(wait=False)

    def flush(self, *, wait: bool = True) -> None:
        """Write until the file holds every recorded row (``wait=False``: unless another
        thread is writing already, which then does it)."""
        while True:
            if not self._writing.acquire(blocking=wait):
                return
            try:
                while True:
                    with self._lock:
                        if self._written == self._version:
                            break
                        version, rows = self._version, list(self._rows.values())
                    self.store.put_bytes(
                        self.key,
                        results_parquet(rows),
                        content_type="application/vnd.apache.parquet",
                    )
                    self._written = version
            finally:
                self._writing.release()
            # A row recorded between our last check and the release found us busy.
            with self._lock:
                if self._written == self._version:
                    return


_RESULT_FIELDS: list[tuple[str, str]] = [
    ("id", "string"),
    ("status", "string"),
    ("workflow", "string"),
    ("seconds", "float64"),
    ("queue_wait", "float64"),
    ("wall_seconds", "float64"),
    ("outputs", "list<string>"),
    ("video_path", "string"),
    ("video_seconds", "float64"),
    ("error", "string"),
    ("prompt_id", "string"),
    ("attempt", "int64"),
    ("fingerprint", "string"),
    ("finished_at", "string"),
    ("loras", "list<string>"),
    ("endpoint", "string"),
]


def results_parquet(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Rows as Parquet bytes with a fixed schema (so an all-empty column keeps its type)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "string": pa.string(),
        "float64": pa.float64(),
        "int64": pa.int64(),
        "list<string>": pa.list_(pa.string()),
    }
    schema = pa.schema([(name, types[kind]) for name, kind in _RESULT_FIELDS])
    table = pa.Table.from_pylist(
        [{k: row.get(k) for k, _ in _RESULT_FIELDS} for row in rows], schema=schema
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def read_results(store: ObjectStore, batch_id: str) -> list[dict[str, Any]]:
    """The rows of a batch's ``results.parquet`` ([] when the batch never ran)."""
    key = f"outputs/{batch_id}/{RESULTS_FILE}"
    if store.exists(key) is None:
        return []
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = store.get_bytes(key)
    try:
        rows: list[dict[str, Any]] = pq.read_table(io.BytesIO(data)).to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(
            f"{store.uri}/{key} is not a readable results table ({exc})",
            hint="delete it to rerun every job of this batch, or use another --batch-id",
        ) from None
    return [r for r in rows if r.get("id")]


def job_prefix(batch_id: str, job_id: str) -> str:
    """The store folder of one job's outputs."""
    return f"outputs/{batch_id}/{job_id}/"


def store_outputs(
    client: ComfyOutputs,
    store: ObjectStore,
    prefix: str,
    outputs: Sequence[OutputFile],
    *,
    clean: bool,
) -> list[str]:
    """Fetch ``outputs`` from ComfyUI (``/view``) into ``prefix`` in the store; returns keys.

    Saved outputs are preferred over temp previews; ``clean`` first deletes what an
    interrupted earlier run of the job left under ``prefix``.
    """
    if clean:
        # Leftovers of an interrupted earlier run of this job: never mixed with new ones.
        for info in list(store.list(prefix)):
            store.delete(info.key)
    chosen = [o for o in outputs if o.type == "output"] or list(outputs)
    keys: list[str] = []
    used: set[str] = set()
    for out in chosen:
        name = safe_name(out.filename)
        if name in used:
            name = safe_name(f"{out.node_id}_{out.filename}")
        used.add(name)
        data = client.fetch_output(out)
        key = prefix + name
        store.put_bytes(key, data, content_type=mimetypes.guess_type(name)[0])
        keys.append(key)
    return keys
