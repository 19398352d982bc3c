"""``comfyfleet catalog``: list, validate and show the model catalog.

``list`` is the storage table: every file with its size, tier, source and how well its facts
are verified, then per profile the number of files, the bytes and the VRAM floor.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from comfyfleet.catalog import (
    Catalog,
    ModelFile,
    ProfileSummary,
    catalog_warnings,
    load_catalog,
    validate_catalog,
)
from comfyfleet.cli.common import add_catalog_option, add_json_option, print_json
from comfyfleet.units import format_bytes


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "catalog",
        help="list, validate and show the model catalog",
        description="The pinned model catalog (catalog/models.yaml) plus your own files. "
        "`--catalog builtin --catalog loras.yaml` combines the built-in catalog with yours.",
    )
    actions = parser.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)

    p_list = actions.add_parser(
        "list", help="the storage table: files, sizes, sources, totals per profile"
    )
    add_catalog_option(p_list)
    p_list.add_argument(
        "--profile", metavar="NAME", help="only the files of this profile (default: every file)"
    )
    add_json_option(p_list)
    p_list.set_defaults(func=cmd_list)

    p_validate = actions.add_parser(
        "validate", help="check catalog files; exit 0 when valid, 2 with one line per problem"
    )
    add_catalog_option(p_validate)
    p_validate.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (unpinned revisions, unknown sha256) as problems",
    )
    add_json_option(p_validate)
    p_validate.set_defaults(func=cmd_validate)

    p_show = actions.add_parser("show", help="every field of one entry")
    add_catalog_option(p_show)
    p_show.add_argument("id", metavar="ID", help="model id (see `comfyfleet catalog list`)")
    add_json_option(p_show)
    p_show.set_defaults(func=cmd_show)


# ---------------------------------------------------------------- list


def model_record(catalog: Catalog, model: ModelFile) -> dict[str, Any]:
    """Every field of ``model`` as JSON-ready data, plus its store key and profiles."""
    data = model.model_dump(mode="json")
    data["key"] = model.key
    data["source_display"] = model.source.describe()
    data["member_of"] = catalog.profiles_of(model.id)
    return data


def _size_cell(model: ModelFile) -> str:
    if model.size is not None:
        return format_bytes(model.size)
    if model.size_estimate is not None:
        return "~" + format_bytes(model.size_estimate)
    return "?"


def _total_cell(summary: ProfileSummary) -> str:
    text = ("" if summary.exact else "~") + format_bytes(summary.total_bytes)
    if summary.unknown_size_ids:
        text += f" + {len(summary.unknown_size_ids)} unknown"
    return text


def _vram_cell(gb: float) -> str:
    return f"{gb:g} GB" if gb else "-"


def _table(rows: list[list[str]], headers: list[str]) -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return lines


def cmd_list(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    if args.profile:
        models = catalog.select(profile=args.profile)
        names = [args.profile]
    else:
        models = list(catalog.models.values())
        names = catalog.profile_names()
    summaries = [catalog.summary(name) for name in names]
    if args.json:
        print_json(
            {
                "catalogs": catalog.sources,
                "models": [model_record(catalog, m) for m in models],
                "profiles": {s.name: s.as_dict() for s in summaries},
            }
        )
        return 0
    rows = [
        [
            m.id,
            f"{m.folder}/{m.file}",
            _size_cell(m),
            m.tier,
            m.source.describe(),
            m.verified,
        ]
        for m in models
    ]
    out = _table(rows, ["ID", "FILE", "SIZE", "TIER", "SOURCE", "VERIFIED"])
    out.append("")
    profile_rows = [
        [s.name, str(len(s.ids)), _total_cell(s), _vram_cell(s.min_vram_gb), s.description]
        for s in summaries
    ]
    out += _table(profile_rows, ["PROFILE", "FILES", "TOTAL", "MIN VRAM", "DESCRIPTION"])
    if any(not s.exact for s in summaries):
        out.append("")
        out.append(
            "~ includes size estimates; '?' / unknown = size not in the catalog "
            "(the mirror records it)"
        )
    print("\n".join(out))
    return 0


# ---------------------------------------------------------------- validate


def validation_result(catalog: Catalog, *, strict: bool) -> dict[str, Any]:
    """What ``catalog validate`` found: problems (warnings among them with ``strict``)."""
    problems = catalog.load_problems + validate_catalog(catalog)
    warnings = catalog_warnings(catalog)
    if strict:
        problems, warnings = problems + warnings, []
    return {
        "ok": not problems,
        "strict": strict,
        "catalogs": catalog.sources,
        "models": len(catalog.models),
        "profiles": len(catalog.profile_names()),
        "problems": problems,
        "warnings": warnings,
    }


def cmd_validate(args: argparse.Namespace) -> int:
    # File-level failures (missing file, bad YAML) raise CatalogError: exit 2 via main().
    catalog = load_catalog(args.catalog, check=False)
    result = validation_result(catalog, strict=args.strict)
    code = 0 if result["ok"] else 2
    if args.json:
        print_json(result)
        return code
    files = ", ".join(catalog.sources)
    for line in result["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    problems = result["problems"]
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        print(
            f"error: {len(problems)} problem(s) in {files}\n"
            "hint: fix the fields named above and run `comfyfleet catalog validate` again",
            file=sys.stderr,
        )
        return code
    warnings = result["warnings"]
    print(
        f"ok: {result['models']} models, {result['profiles']} profiles in {files}"
        + (f" ({len(warnings)} warnings)" if warnings else "")
    )
    return code


# ---------------------------------------------------------------- show


def cmd_show(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    model = catalog.get(args.id)
    record = model_record(catalog, model)
    if args.json:
        print_json(record)
        return 0
    record = _drop_empty(record)
    if model.size is not None:
        record["size"] = f"{model.size} ({format_bytes(model.size)})"
    if model.sha256 is None:
        record["sha256"] = "unknown (the mirror takes it from the source)"
    order = ["id", "name", "kind", "key", "folder", "file", "size", "size_estimate", "sha256"]
    shown = {k: record[k] for k in order if k in record}
    shown.update({k: v for k, v in record.items() if k not in shown})
    print(yaml.safe_dump(shown, sort_keys=False, allow_unicode=True, width=100).rstrip())
    return 0


def _drop_empty(value: Any) -> Any:
    """``value`` without None or empty fields, recursively (for a readable ``show``)."""
    if isinstance(value, dict):
        return {
            k: _drop_empty(v) for k, v in value.items() if v is not None and v != [] and v != ()
        }
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value
