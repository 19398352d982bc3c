"""Re-check upstream sources and report what changed; never replaces a file.

``check_upstream`` asks each model's source what it holds now (metadata only, no bytes)
and compares it with the catalog and with the store's manifest:

=================  ==========================================================================
kind               meaning
=================  ==========================================================================
new-commit         an unpinned Hugging Face ref (``main``, a tag) points at a newer commit
                   than the one mirrored
newer-upstream     a pinned Hugging Face file differs on ``main`` from the pinned commit
new-version        a CivitAI model has a newer published version than the tracked one
changed-sha256     the source reports other bytes than the catalog pin / the mirrored file
changed-size       the source reports another size than the catalog pin / the mirrored file
not-mirrored       the store holds no verified copy yet
unreachable        the source could not be asked (the error says why)
=================  ==========================================================================

A pinned entry (catalog ``sha256``, or an HF commit revision) is only reported: the mirror
refuses to replace it (``UpstreamChanged``) until the catalog is updated. Unpinned files
are replaced by the next ``mirror`` run.

Every kind but ``not-mirrored`` (a fact about the store, not about upstream) is *notable*:
:func:`upstream_notice` folds them into the payload of the
``comfyfleet.mirror.upstream-changed`` event that the ``mirror-refresh`` flow emits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from comfyfleet.catalog import CivitaiSource, HFSource, ModelFile
from comfyfleet.errors import ComfyfleetError
from comfyfleet.sources import Tokens, Upstream, describe_upstream
from comfyfleet.store.base import ObjectStore
from comfyfleet.store.manifest import ManifestEntry, read_manifest

if TYPE_CHECKING:
    import httpx

ChangeKind = Literal[
    "new-commit",
    "newer-upstream",
    "new-version",
    "changed-sha256",
    "changed-size",
    "not-mirrored",
    "unreachable",
]


@dataclass(frozen=True)
class UpstreamChange:
    """One thing that differs upstream for one model."""

    id: str
    kind: ChangeKind
    pinned: bool
    old: str | None
    new: str | None
    detail: str
    source: str = ""

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "pinned": self.pinned,
            "old": self.old,
            "new": self.new,
            "detail": self.detail,
            "source": self.source,
        }


UPSTREAM_CHANGED_EVENT = "comfyfleet.mirror.upstream-changed"
# Kinds that say something about upstream (not-mirrored is about the store).
NOTABLE_KINDS: frozenset[str] = frozenset(
    {"new-commit", "newer-upstream", "new-version", "changed-sha256", "changed-size", "unreachable"}
)


def upstream_notice(changes: Sequence[UpstreamChange]) -> dict[str, Any] | None:
    """The ``upstream-changed`` event payload for ``changes``, None when nothing notable.

    Keys: ``ids`` (every model with a notable change, catalog order), ``unpinned_ids``
    (those the next ``mirror`` run replaces: what an automation re-mirrors),
    ``pinned_ids`` (need a catalog update), ``unreachable_ids``, ``kinds`` (count per
    kind) and ``changes`` (one row each: id, kind, pinned, old, new, detail, source).
    """
    notable = [c for c in changes if c.kind in NOTABLE_KINDS]
    if not notable:
        return None

    def ids(keep: Callable[[UpstreamChange], bool]) -> list[str]:
        return list(dict.fromkeys(c.id for c in notable if keep(c)))

    kinds: dict[str, int] = {}
    for c in notable:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    unreachable = ids(lambda c: c.kind == "unreachable")
    return {
        "ids": ids(lambda c: True),
        "unpinned_ids": ids(lambda c: not c.pinned and c.kind != "unreachable"),
        "pinned_ids": ids(lambda c: c.pinned and c.kind != "unreachable"),
        "unreachable_ids": unreachable,
        "kinds": kinds,
        "changes": [c.row() for c in notable],
    }


def is_pinned(model: ModelFile) -> bool:
    """True when the catalog fixes the bytes (a sha256, or an HF commit revision)."""
    if model.sha256:
        return True
    return isinstance(model.source, HFSource) and model.source.pinned


def _action(pinned: bool) -> str:
    if pinned:
        return "pinned: not replaced; update the catalog entry to take it"
    return "not pinned: the next `comfyfleet mirror` takes it"


def _compare(
    model: ModelFile,
    entry: ManifestEntry | None,
    up: Upstream,
    pinned: bool,
) -> list[UpstreamChange]:
    changes: list[UpstreamChange] = []

    def add(kind: ChangeKind, old: str | None, new: str | None, what: str) -> None:
        detail = f"{what}; {_action(pinned)}"
        changes.append(UpstreamChange(model.id, kind, pinned, old, new, detail, up.source))

    up_sha = up.sha256.lower() if up.sha256 else None
    known_sha = model.sha256 or (entry.sha256 if entry else None)
    known_size = model.size if model.size is not None else (entry.size if entry else None)
    source = model.source

    moved = (
        entry is not None
        and entry.revision is not None
        and up.revision is not None
        and entry.revision != up.revision
    )
    if isinstance(source, HFSource) and not source.pinned and entry is not None and moved:
        same = up_sha is not None and up_sha == entry.sha256
        add(
            "new-commit",
            entry.revision,
            up.revision,
            f"{source.repo}@{source.revision} moved to {(up.revision or '')[:12]}"
            + (" (this file is unchanged)" if same else ""),
        )
    if isinstance(source, CivitaiSource) and up.latest_version is not None:
        tracked = up.revision or (str(source.version_id) if source.version_id else None)
        if tracked is not None and str(up.latest_version) != tracked:
            add(
                "new-version",
                tracked,
                str(up.latest_version),
                f"CivitAI model {source.model_id} has a newer version {up.latest_version}",
            )
    if known_sha and up_sha and up_sha != known_sha:
        add("changed-sha256", known_sha, up_sha, "the source reports other bytes")
    if known_size is not None and up.size is not None and up.size != known_size:
        add("changed-size", str(known_size), str(up.size), "the source reports another size")
    return changes


def _check_one(
    model: ModelFile,
    entry: ManifestEntry | None,
    present: bool,
    tokens: Tokens,
    http: httpx.Client | None,
) -> list[UpstreamChange]:
    pinned = is_pinned(model)
    label = model.source.describe()  # describe() never shows credentials
    changes: list[UpstreamChange] = []
    if not present:
        changes.append(
            UpstreamChange(
                model.id,
                "not-mirrored",
                pinned,
                None,
                None,
                f"{model.key} is not in the store yet; `comfyfleet mirror --only {model.id}`",
                label,
            )
        )
    try:
        up = describe_upstream(model, tokens, http=http)
    except ComfyfleetError as exc:
        changes.append(
            UpstreamChange(model.id, "unreachable", pinned, None, None, exc.one_line(), label)
        )
        return changes
    changes.extend(_compare(model, entry, up, pinned))
    source = model.source
    if isinstance(source, HFSource) and source.pinned and model.sha256:
        # A pinned commit cannot move; say whether the file differs on the default branch.
        on_main = model.model_copy(
            update={"source": source.model_copy(update={"revision": "main"}), "sha256": None}
        )
        try:
            head = describe_upstream(on_main, tokens, http=http)
        except ComfyfleetError as exc:
            changes.append(
                UpstreamChange(
                    model.id,
                    "unreachable",
                    True,
                    None,
                    None,
                    f"on main: {exc.one_line()}",
                    label,
                )
            )
        else:
            head_sha = head.sha256.lower() if head.sha256 else None
            if head_sha and head_sha != model.sha256:
                changes.append(
                    UpstreamChange(
                        model.id,
                        "newer-upstream",
                        True,
                        model.sha256,
                        head_sha,
                        f"{source.repo} main ({(head.revision or '')[:12]}) holds other bytes "
                        f"for {source.path}; {_action(True)}",
                        head.source,
                    )
                )
    return changes


def check_upstream(
    models: Sequence[ModelFile],
    store: ObjectStore,
    tokens: Tokens,
    *,
    http: httpx.Client | None = None,
    max_parallel: int = 4,
) -> list[UpstreamChange]:
    """Every upstream change for ``models`` (model order); reads the store, writes nothing."""
    manifest = read_manifest(store).by_key()

    def one(model: ModelFile) -> list[UpstreamChange]:
        entry = manifest.get(model.key)
        info = store.exists(model.key)
        present = info is not None and (entry is not None or info.sha256 is not None)
        return _check_one(model, entry, present, tokens, http)

    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(models) or 1))) as pool:
        per_model = list(pool.map(one, models))
    return [change for changes in per_model for change in changes]
