"""``comfyfleet lora add <link>``: a LoRA from a CivitAI or Hugging Face link, pinned and
mirrored.

The link is resolved by its source (a Hugging Face link through ``HF_ENDPOINT``, a CivitAI
link through ``CIVITAI_BASE_URL``, when set): the entry written to the catalog file pins
the exact file (HF commit; CivitAI version and file name) with the source's sha256 and
size, folder ``loras`` and no profiles (every entry belongs to ``full``). Other entries,
and the file's comments where possible, are kept; the file is replaced atomically. Then
the LoRA is mirrored into the store like ``comfyfleet mirror`` does.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from comfyfleet.catalog import ModelFile, load_catalog
from comfyfleet.cli.common import add_json_option, add_store_options, print_json
from comfyfleet.cli.mirror_cmd import mirror_one, report
from comfyfleet.cli.stores import resolve_store
from comfyfleet.errors import CatalogError
from comfyfleet.generate.loras import lora_entry
from comfyfleet.mirror.driver import MirrorRun
from comfyfleet.sources import Tokens

DEFAULT_CATALOG = "loras.yaml"
_TOP_KEY = re.compile(r"^([A-Za-z_][\w-]*)\s*:")
_ORDER = (
    "id",
    "name",
    "kind",
    "folder",
    "file",
    "size",
    "sha256",
    "source",
    "verified",
    "profiles",
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("lora", help="add LoRAs from CivitAI / Hugging Face links")
    actions = parser.add_subparsers(dest="lora_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="resolve a link, write a pinned entry into your catalog file, mirror it",
        description="Resolve a CivitAI or Hugging Face link, add a pinned entry (sha256, "
        "size, exact revision) to the catalog file, and mirror the LoRA into the store.",
    )
    add.add_argument("link", metavar="LINK", help="a CivitAI or Hugging Face link to the LoRA")
    add.add_argument(
        "--catalog",
        default=DEFAULT_CATALOG,
        metavar="PATH",
        help=f"the catalog file to add to (default: ./{DEFAULT_CATALOG}, created if missing)",
    )
    add.add_argument("--id", metavar="ID", help="the entry's id (default: from the file name)")
    add_store_options(add)
    add.add_argument(
        "--no-mirror", action="store_true", help="only write the catalog entry, do not mirror"
    )
    add_json_option(add)
    add.set_defaults(func=cmd_lora_add)


# ---------------------------------------------------------------- the catalog file


def _read(path: Path) -> tuple[str | None, dict[str, Any]]:
    if not path.exists():
        return None, {}
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}", hint="fix the file first") from None
    if data is None:
        return text, {}
    if not isinstance(data, dict) or not isinstance(data.get("models") or [], list):
        raise CatalogError(
            f"{path}: expected a mapping with a 'models' list",
            hint="see catalog/loras.example.yaml for the format",
        )
    return text, data


def _check_new(path: Path, data: dict[str, Any], entry: dict[str, Any]) -> None:
    """Refuse an id or target that an entry of ``path`` or the built-in catalog has."""
    key = f"models/{entry['folder']}/{entry['file']}".lower()
    existing: list[tuple[str, str, str]] = []
    for other in data.get("models") or []:
        if isinstance(other, dict):
            target = f"models/{other.get('folder')}/{other.get('file')}".lower()
            existing.append((str(other.get("id")), target, str(path)))
    try:
        builtin = load_catalog(["builtin"])
    except CatalogError:
        builtin = None
    if builtin is not None:
        existing.extend(
            (m.id, m.key.lower(), "the built-in catalog") for m in builtin.models.values()
        )
    for other_id, target, where in existing:
        if other_id == entry["id"]:
            raise CatalogError(
                f"{path}: id {entry['id']!r} is already used in {where}",
                hint="pass --id with another id",
            )
        if target == key:
            raise CatalogError(
                f"{path}: {other_id!r} in {where} already writes {key}",
                hint="this LoRA is already in the catalog; mirror it with "
                f"`comfyfleet mirror --catalog {path} --only {other_id}`",
            )


def _append_text(text: str, data: dict[str, Any], entry: dict[str, Any]) -> str | None:
    """``text`` with ``entry`` appended to its models list, keeping comments; None when the
    file's layout does not allow it (the caller then rewrites the whole file)."""
    models = data.get("models")
    if not isinstance(models, list) or not models:
        return None
    lines = text.splitlines()
    top = [m.group(1) for line in lines if (m := _TOP_KEY.match(line))]
    if not top or top[-1] != "models":
        return None
    start = max(i for i, line in enumerate(lines) if line.startswith("models"))
    item = next((re.match(r"^(\s*)- ", ln) for ln in lines[start + 1 :] if ln.strip()), None)
    if item is None:
        return None
    rendered = yaml.safe_dump([entry], sort_keys=False, allow_unicode=True, width=1000)
    new_text = text.rstrip("\n") + "\n\n" + textwrap.indent(rendered, item.group(1))
    try:
        reparsed = yaml.safe_load(new_text)
    except yaml.YAMLError:
        return None
    return new_text if reparsed == {**data, "models": [*models, entry]} else None


def render_with_entry(text: str | None, data: dict[str, Any], entry: dict[str, Any]) -> str:
    """The catalog file's new text: ``entry`` appended, the rest kept."""
    if text is None or not data:
        body = yaml.safe_dump(
            {"schema": 1, "models": [entry]}, sort_keys=False, allow_unicode=True, width=1000
        )
        if text and text.strip():
            return text.rstrip("\n") + "\n\n" + body  # a file of comments only keeps them
        return (
            "# LoRAs added with `comfyfleet lora add`; same schema as catalog/models.yaml.\n" + body
        )
    appended = _append_text(text, data, entry)
    if appended is not None:
        return appended
    merged = dict(data)
    merged["models"] = [*(data.get("models") or []), entry]
    return yaml.safe_dump(merged, sort_keys=False, allow_unicode=True, width=1000)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, validate it as a catalog, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        load_catalog([tmp])  # the whole file must stay a valid catalog
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def validate_entry(path: Path, entry: dict[str, Any]) -> ModelFile:
    """``entry`` as a catalog model, or a ``CatalogError`` naming the field."""
    try:
        return ModelFile.model_validate({**entry, "origin": str(path)})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise CatalogError(
            f"the entry for {entry.get('id')!r} is invalid: field '{field}': {first['msg']}",
            hint="report this link; add the entry by hand meanwhile",
        ) from None


# ---------------------------------------------------------------- the command


def cmd_lora_add(args: argparse.Namespace) -> int:
    path = Path(args.catalog)
    tokens = Tokens.from_env()
    entry = lora_entry(args.link, tokens, entry_id=args.id)
    model = validate_entry(path, entry)
    text, data = _read(path)
    _check_new(path, data, entry)  # before mirroring anything
    run: MirrorRun | None = None
    store_uri = ""
    if not args.no_mirror:
        store = resolve_store(args)
        store_uri = store.uri
        bars = not args.json and sys.stderr.isatty()
        run = mirror_one(model, store, bars=bars, tokens=tokens)
        result = run.results[0]
        # Facts the API does not state exactly (CivitAI sizes) come from the verified bytes.
        if result.ok and "size" not in entry:
            entry["size"] = result.bytes
        if result.ok and "sha256" not in entry and result.sha256:
            entry["sha256"] = result.sha256
        entry = {k: entry[k] for k in _ORDER if k in entry}
    write_atomically(path, render_with_entry(text, data, entry))
    print(f"added {model.id} -> {model.key} to {path}", file=sys.stderr)
    if args.json:
        mirrored = run.results[0].row() if run is not None else None
        print_json({"catalog": str(path), "entry": entry, "mirrored": mirrored})
        for r in run.failed if run is not None else []:
            print(f"failed: {r.id}: {r.error}", file=sys.stderr)
    elif run is not None:
        report(run, store_uri, as_json=False)
    if run is not None and not run.ok:
        print(
            f"the entry was added to {path}; retry the mirror with "
            f"`comfyfleet mirror --catalog {path} --only {model.id}`",
            file=sys.stderr,
        )
        return 1
    return 0
