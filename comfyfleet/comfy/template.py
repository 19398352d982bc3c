"""A user's own API-format workflow file as a template: ``{{column}}`` takes the job's value.

A string input that is exactly ``"{{seed}}"`` becomes the job's value with its own type (an
int stays an int, so ``KSampler.seed`` validates); a placeholder inside a longer string is
formatted into it (``"a photo of {{subject}}, 35mm"``). Image columns -- ``image`` and any
column whose name ends in ``image`` -- hold a URL or a path; the caller uploads them first
(:meth:`ComfyClient.upload_image`) and passes the name ComfyUI answered with.

A placeholder with no column, or whose column is empty for this job, is a
:class:`ConfigError` naming the file, the node, the input and the placeholder.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfyfleet.errors import ConfigError

PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")


def is_missing(value: Any) -> bool:
    """None, NaN, pandas NA/NaT: a cell with no value."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    # pandas.NA / NaT without importing pandas here.
    return type(value).__name__ in ("NAType", "NaTType")


def plain(value: Any) -> Any:
    """numpy/pandas scalars -> the Python value (JSON-serialisable), others unchanged."""
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__.startswith("numpy"):
        return item()
    return value


def image_columns(values: Mapping[str, Any]) -> list[str]:
    """Columns that name an input image (``image``, ``*image``) and have a value."""
    return [
        str(key)
        for key, value in values.items()
        if str(key).lower().endswith("image") and not is_missing(value) and str(value).strip()
    ]


def load_workflow_file(path: str | Path) -> dict[str, Any]:
    """Read an API-format workflow file; refuse UI-format files and other JSON clearly."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"workflow file {file} does not exist",
            hint="give a built-in workflow name or the path of an API-format JSON file",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"workflow file {file} cannot be read: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"workflow file {file} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise ConfigError(
            f"workflow file {file} is a UI workflow (nodes/links), not the API format",
            hint="in ComfyUI use Workflow > Export (API) / 'Save (API Format)' and use that file",
        )
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"workflow file {file} is not an API-format object of nodes")
    for node_id, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise ConfigError(
                f"workflow file {file}: node {node_id} has no class_type",
                hint="export the workflow with 'Save (API Format)'",
            )
    return data


def placeholders(workflow: Mapping[str, Any]) -> set[str]:
    """Every ``{{name}}`` used in the workflow's inputs."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            found.update(PLACEHOLDER.findall(value))
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    for node in workflow.values():
        if isinstance(node, Mapping):
            walk(node.get("inputs", {}))
    return found


def _as_text(value: Any) -> str:
    value = plain(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # pandas reads int columns with gaps as float
    return str(value)


def render(
    workflow: Mapping[str, Any], values: Mapping[str, Any], *, source: str = "<workflow>"
) -> dict[str, Any]:
    """A copy of ``workflow`` with every ``{{column}}`` replaced by the job's value."""
    out: dict[str, Any] = {}
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping):
            out[str(node_id)] = node
            continue
        class_type = str(node.get("class_type", "?"))
        rendered = dict(node)
        inputs = node.get("inputs", {})
        if isinstance(inputs, Mapping):
            rendered["inputs"] = {
                name: _render_value(
                    value, values, where=(source, str(node_id), class_type, str(name))
                )
                for name, value in inputs.items()
            }
        out[str(node_id)] = rendered
    return out


def _lookup(name: str, values: Mapping[str, Any], where: tuple[str, str, str, str]) -> Any:
    source, node_id, class_type, input_name = where
    if name not in values:
        known = ", ".join(sorted(str(k) for k in values)) or "none"
        raise ConfigError(
            f"{source}: node {node_id} ({class_type}) input '{input_name}' uses "
            f"{{{{{name}}}}}, which is not a column of this job",
            hint=f"add a '{name}' column to the jobs file or fix the placeholder "
            f"(columns: {known})",
        )
    value = values[name]
    if is_missing(value):
        raise ConfigError(
            f"{source}: node {node_id} ({class_type}) input '{input_name}' uses "
            f"{{{{{name}}}}}, but this job has no value for '{name}'",
            hint=f"fill the '{name}' column for every job that uses this workflow",
        )
    return plain(value)


def _render_value(value: Any, values: Mapping[str, Any], where: tuple[str, str, str, str]) -> Any:
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value.strip())
        if whole:
            return _lookup(whole.group(1), values, where)
        return PLACEHOLDER.sub(lambda m: _as_text(_lookup(m.group(1), values, where)), value)
    if isinstance(value, Mapping):
        return {k: _render_value(v, values, where) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(v, values, where) for v in value]
    return value
