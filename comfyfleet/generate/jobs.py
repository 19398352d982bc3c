"""The jobs table of a batch: one row a job, read with pandas from CSV, JSONL or Parquet.

Columns (only ``id`` and ``workflow`` are required)::

    id         unique job id; becomes the folder outputs/<batch>/<id>/
    workflow   a built-in workflow name, or an API-format JSON file (relative to the jobs file)
    prompt, negative, checkpoint
    loras      "catalog-id:0.8;https://civitai.com/models/1?modelVersionId=2:0.6:0.4" (a file
               ComfyUI lists, a catalog id or a CivitAI/HF link, then strength_model and
               optionally strength_clip) or a JSON list of such strings or of
               {"name": ref, "strength"|"strength_model": s, "strength_clip": c}
               (``comfy.workflows.parse_loras``)
    seed, width, height, steps, cfg
    image      a URL or a path (relative to the jobs file) uploaded to ComfyUI before submission;
               any column whose name ends in ``image`` is treated the same way
    video      a video workflow (e.g. wan_i2v, svd_i2v) that turns the image output into a video
    ...        any other column is passed on as a value a workflow file refers to ({{column}})

Every problem is reported at once as one ``ConfigError`` that names the file, row and column.
Rows are numbered from 1 (the first job), the header does not count.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyfleet.comfy.template import load_workflow_file
from comfyfleet.comfy.workflows import LoraSpec, parse_loras
from comfyfleet.errors import ConfigError

KNOWN_COLUMNS = (
    "id",
    "workflow",
    "prompt",
    "negative",
    "checkpoint",
    "loras",
    "seed",
    "width",
    "height",
    "steps",
    "cfg",
    "image",
    "video",
)
_INT_COLUMNS = {
    "seed": (0, 2**64 - 1),
    "width": (16, 16384),
    "height": (16, 16384),
    "steps": (1, 10000),
}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_SUFFIXES = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def is_image_column(name: str) -> bool:
    """``image`` and every column whose name ends in ``image`` hold an input image."""
    return name.lower().endswith("image")


@dataclass(frozen=True)
class Job:
    """One validated row of the jobs table."""

    id: str
    workflow: str
    row: int
    prompt: str | None = None
    negative: str | None = None
    checkpoint: str | None = None
    loras: tuple[LoraSpec, ...] = ()
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg: float | None = None
    image: str | None = None
    video: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """The values a workflow is built from (unset ones left out)."""
        out: dict[str, Any] = {}
        for name in (
            "prompt",
            "negative",
            "checkpoint",
            "seed",
            "width",
            "height",
            "steps",
            "cfg",
            "image",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update(self.extra)
        return out

    def image_inputs(self) -> dict[str, str]:
        """Column -> URL or path of every input image this job needs uploaded."""
        return {k: v for k, v in self.values().items() if is_image_column(k) and isinstance(v, str)}

    def fingerprint(self) -> str:
        """A hash of everything that shapes the job's outputs (a changed row is re-run)."""
        data = {
            "workflow": self.workflow,
            "values": self.values(),
            "loras": [(lr.name, lr.strength_model, lr.strength_clip) for lr in self.loras],
            "video": self.video,
        }
        raw = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


# ---------------------------------------------------------------- reading


def read_jobs(
    path: str | Path,
    *,
    builtin_workflows: Iterable[str] | None = None,
    video_workflows: Iterable[str] | None = None,
) -> list[Job]:
    """Read and validate a jobs file; raise one ``ConfigError`` listing every problem.

    ``builtin_workflows``/``video_workflows`` default to the built-in workflow set of
    ``comfyfleet.comfy.workflows`` (video ones = those that take an image and make a video).
    """
    path = Path(path)
    if builtin_workflows is None or video_workflows is None:
        names, videos = _builtin_names()
        builtin_workflows = names if builtin_workflows is None else builtin_workflows
        video_workflows = videos if video_workflows is None else video_workflows
    records = _read_records(path)
    return parse_jobs(
        records,
        source=path,
        builtin_workflows=set(builtin_workflows),
        video_workflows=set(video_workflows),
    )


def _builtin_names() -> tuple[set[str], set[str]]:
    from comfyfleet.comfy.workflows import BUILTIN_WORKFLOWS

    names = set(BUILTIN_WORKFLOWS)
    # A video stage turns the job's image into a video: workflows that take an image and
    # make an animation (wan_i2v, svd_i2v, cogvideox with an image).
    videos = {
        name
        for name, spec in BUILTIN_WORKFLOWS.items()
        if (spec.needs_image or spec.optional_image) and spec.output_kind != "images"
    }
    return names, videos


def _read_records(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"jobs file {path}: unknown format {path.suffix or '(no suffix)'!r}",
            hint="use .csv, .jsonl or .parquet",
        )
    if not path.is_file():
        raise ConfigError(f"jobs file {path} does not exist", hint="check the JOBS_FILE path")
    try:
        if kind == "csv":
            # Everything as text: pandas would turn id "007" into 7 and empty ints into NaN.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"jobs file {path}: cannot be read as {kind.upper()}: {first}",
            hint=f"check that {path.name} is valid {kind.upper()} with a header row of columns",
        ) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return [{str(k): v for k, v in rec.items()} for rec in frame.to_dict(orient="records")]


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (list, tuple, dict)) else False
    except (TypeError, ValueError):
        return False


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so json and type checks behave."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        try:
            return item()
        except (ValueError, TypeError):
            return value
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and not isinstance(value, (str, bytes)):
        return tolist()
    return value


def parse_jobs(
    records: list[dict[str, Any]],
    *,
    source: Path,
    builtin_workflows: set[str],
    video_workflows: set[str],
) -> list[Job]:
    """Validate raw rows (column -> value) into jobs; see ``read_jobs``."""
    problems: list[str] = []
    jobs: list[Job] = []
    seen: dict[str, list[int]] = {}
    if not records:
        raise ConfigError(f"jobs file {source}: no jobs in it", hint="add one row per job")
    if "id" not in records[0]:
        raise ConfigError(
            f"jobs file {source}: column 'id' is missing",
            hint="every job needs a unique id (columns found: "
            + ", ".join(sorted(records[0]))
            + ")",
        )
    if "workflow" not in records[0]:
        raise ConfigError(
            f"jobs file {source}: column 'workflow' is missing",
            hint="name a built-in workflow ("
            + ", ".join(sorted(builtin_workflows))
            + ") or an API-format JSON file",
        )
    base_dir = source.parent
    for index, raw in enumerate(records, start=1):
        row = {str(k): _plain(v) for k, v in raw.items()}
        where = f"{source.name} row {index}"
        errors: list[str] = []
        job = _parse_row(row, index, where, base_dir, builtin_workflows, video_workflows, errors)
        problems.extend(errors)
        if job is not None:
            jobs.append(job)
        # Count ids of invalid rows too, so a duplicate is reported with the other problems.
        job_id = job.id if job is not None else str(row.get("id") or "").strip()
        if job_id:
            seen.setdefault(job_id, []).append(index)
    problems.extend(_workflow_file_problems(jobs, source))
    for job_id, rows in seen.items():
        if len(rows) > 1:
            problems.append(
                f"{source.name} rows {', '.join(map(str, rows))}: column 'id': "
                f"duplicate id {job_id!r}"
            )
    if problems:
        raise ConfigError(
            f"{len(problems)} problem(s) in jobs file {source}:\n"
            + "\n".join(f"  - {p}" for p in problems),
            hint="fix the rows named above (rows count from 1, the header excluded)",
        )
    return jobs


def _workflow_file_problems(jobs: Iterable[Job], source: Path) -> list[str]:
    """Every workflow file the jobs name, read and parsed once before the batch starts: a
    file that is not JSON or not an API-format workflow is a problem of the jobs file, not a
    failure found when its first job runs."""
    rows_of: dict[str, list[int]] = {}
    for job in jobs:
        if job.workflow.lower().endswith(".json"):
            rows_of.setdefault(job.workflow, []).append(job.row)
    problems: list[str] = []
    for workflow, rows in rows_of.items():
        try:
            load_workflow_file(workflow)
        except ConfigError as exc:
            label = "row" if len(rows) == 1 else "rows"
            problems.append(
                f"{source.name} {label} {', '.join(map(str, rows))}: column 'workflow': "
                f"{exc.message}"
            )
    return problems


def _parse_row(
    row: dict[str, Any],
    index: int,
    where: str,
    base_dir: Path,
    builtin_workflows: set[str],
    video_workflows: set[str],
    errors: list[str],
) -> Job | None:
    raw_id = row.get("id")
    if _blank(raw_id):
        errors.append(f"{where}: column 'id': empty; every job needs a unique id")
        return None
    if isinstance(raw_id, float) and raw_id.is_integer():
        raw_id = int(raw_id)
    job_id = str(raw_id).strip()
    if not _ID_RE.match(job_id):
        errors.append(
            f"{where}: column 'id': {job_id!r} is not usable as a folder name "
            "(letters, digits, '.', '_', '-'; up to 128 characters)"
        )
        return None
    where = f"{where} (id {job_id!r})"

    workflow = _text(row.get("workflow"))
    if workflow is None:
        errors.append(f"{where}: column 'workflow': empty; name a built-in workflow or a file")
        workflow = ""
    elif workflow not in builtin_workflows:
        candidate = Path(workflow).expanduser()
        if not candidate.is_absolute():
            candidate = base_dir / candidate
        if candidate.suffix.lower() != ".json" or not candidate.is_file():
            errors.append(
                f"{where}: column 'workflow': {workflow!r} is neither a built-in workflow ("
                + ", ".join(sorted(builtin_workflows))
                + ") nor an existing .json file next to the jobs file"
            )
        else:
            workflow = str(candidate.resolve())

    values = _standard_values(row, where, errors, builtin=workflow in builtin_workflows)

    video = _text(row.get("video"))
    if video is not None and video not in video_workflows:
        errors.append(
            f"{where}: column 'video': unknown video workflow {video!r} "
            f"(known: {', '.join(sorted(video_workflows)) or 'none'})"
        )

    loras = _loras(row.get("loras"), where, errors)

    extra, images = _extra_columns(row, base_dir, where, errors)

    if errors:
        return None
    return Job(
        id=job_id,
        workflow=workflow,
        row=index,
        prompt=values["prompt"],
        negative=values["negative"],
        checkpoint=values["checkpoint"],
        loras=tuple(loras),
        seed=values["seed"],
        width=values["width"],
        height=values["height"],
        steps=values["steps"],
        cfg=values["cfg"],
        image=images.get("image"),
        video=video,
        extra=extra,
    )


def _extra_columns(
    row: Mapping[str, Any], base_dir: Path, where: str, errors: list[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """(the non-standard columns with a value, the image columns as URLs or resolved paths);
    image paths of extra columns replace their cells in the first."""
    extra: dict[str, Any] = {}
    for name, value in row.items():
        if name in KNOWN_COLUMNS or _blank(value):
            continue
        extra[name] = value
    images: dict[str, str] = {}
    for name, value in [("image", row.get("image")), *extra.items()]:
        if not is_image_column(name) or _blank(value):
            continue
        if not isinstance(value, str):
            errors.append(f"{where}: column '{name}': expected a URL or a path, got {value!r}")
            continue
        images[name] = _image_location(value.strip(), name, base_dir, where, errors)
    extra.update({k: v for k, v in images.items() if k != "image"})
    return extra, images


def _standard_values(
    row: Mapping[str, Any], where: str, errors: list[str], *, builtin: bool
) -> dict[str, Any]:
    """The standard columns of a row, checked (``errors`` collects the problems).

    Width and height must be multiples of 8 only for built-in workflows, whose latent sizes
    need it; a user workflow may use them anywhere (``ImageScale`` takes any size), and
    ComfyUI checks its own limits there.
    """
    values: dict[str, Any] = {}
    for name in ("prompt", "negative", "checkpoint"):
        values[name] = _text(row.get(name))
    for name, (low, high) in _INT_COLUMNS.items():
        values[name] = _integer(row.get(name), name, low, high, where, errors)
    values["cfg"] = _number(row.get("cfg"), "cfg", 0.0, 100.0, where, errors)
    for name in ("width", "height"):
        if builtin and values[name] is not None and values[name] % 8:
            errors.append(f"{where}: column '{name}': {values[name]} is not a multiple of 8")
    return values


def _text(value: Any) -> str | None:
    if _blank(value):
        return None
    return str(value).strip()


def _integer(
    value: Any, name: str, low: int, high: int, where: str, errors: list[str]
) -> int | None:
    if _blank(value):
        return None
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.0*)?", value.strip()):
        number = int(float(value.strip())) if "." in value else int(value.strip())
    if number is None:
        errors.append(f"{where}: column '{name}': {value!r} is not a whole number")
        return None
    if not low <= number <= high:
        errors.append(f"{where}: column '{name}': {number} is outside {low}..{high}")
        return None
    return number


def _number(
    value: Any, name: str, low: float, high: float, where: str, errors: list[str]
) -> float | None:
    if _blank(value):
        return None
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str) and _NUMBER_RE.match(value.strip()):
        number = float(value.strip())
    if number is None or math.isnan(number):
        errors.append(f"{where}: column '{name}': {value!r} is not a number")
        return None
    if not low <= number <= high:
        errors.append(f"{where}: column '{name}': {number:g} is outside {low:g}..{high:g}")
        return None
    return number


def _image_location(value: str, name: str, base_dir: Path, where: str, errors: list[str]) -> str:
    if value.startswith(("http://", "https://")):
        return value
    if "://" in value:
        errors.append(
            f"{where}: column '{name}': {value.split('?', 1)[0]!r}: only http(s) URLs and "
            "local paths are accepted"
        )
        return value
    candidate = Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    if not candidate.is_file():
        errors.append(f"{where}: column '{name}': image file {value!r} does not exist")
        return value
    return str(candidate.resolve())


def _loras(value: Any, where: str, errors: list[str]) -> list[LoraSpec]:
    try:
        refs = parse_loras(value)
    except ConfigError as exc:
        errors.append(f"{where}: column 'loras': {exc.message}")
        return []
    for ref in refs:
        for strength in (ref.strength_model, ref.strength_clip):
            if not -100 <= strength <= 100:
                errors.append(
                    f"{where}: column 'loras': strength {strength:g} of {ref.name!r} is outside "
                    "-100..100"
                )
    return refs
