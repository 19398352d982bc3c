"""refresh.check_upstream against the Hugging Face test hub."""

from __future__ import annotations

from comfyfleet.mirror.driver import mirror_files
from comfyfleet.mirror.refresh import check_upstream
from comfyfleet.sources import Tokens
from comfyfleet.store.base import ObjectStore
from tests.doubles.hf_hub import FakeHub
from tests.mirror.conftest import SETTINGS, hf_model
from tests.mirror.support import payload, sha


def kinds(changes: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(c.id, c.kind) for c in changes]


def test_nothing_changed_reports_nothing(hub: FakeHub, local_store: ObjectStore) -> None:
    data = payload(3000)
    commit = hub.add_file("org/r", "a.safetensors", data)
    models = [
        hf_model("a", "org/r", "a.safetensors"),
        hf_model("pinned", "org/r", "a.safetensors", revision=commit, sha256=sha(data)),
    ]
    models[1] = models[1].model_copy(update={"file": "b.safetensors"})
    assert mirror_files(models, local_store, tokens=Tokens(), settings=SETTINGS).ok
    assert check_upstream(models, local_store, Tokens()) == []


def test_unpinned_ref_moved(hub: FakeHub, local_store: ObjectStore) -> None:
    hub.add_file("org/r", "a.safetensors", payload(3000, seed=1))
    hub.add_file("org/r", "other.safetensors", payload(10))
    model = hf_model("a", "org/r", "a.safetensors")
    assert mirror_files([model], local_store, tokens=Tokens(), settings=SETTINGS).ok

    unrelated = hub.add_file("org/r", "README.md", b"docs")  # main moves, the file does not
    changes = check_upstream([model], local_store, Tokens())
    assert kinds(changes) == [("a", "new-commit")]
    assert changes[0].new == unrelated and not changes[0].pinned
    assert "unchanged" in changes[0].detail

    hub.add_file("org/r", "a.safetensors", payload(3000, seed=2))
    assert kinds(check_upstream([model], local_store, Tokens())) == [
        ("a", "new-commit"),
        ("a", "changed-sha256"),
    ]


def test_pinned_commit_reports_newer_file_on_main(hub: FakeHub, local_store: ObjectStore) -> None:
    old = payload(2000, seed=1)
    commit = hub.add_file("org/r", "m.safetensors", old)
    model = hf_model("m", "org/r", "m.safetensors", revision=commit, sha256=sha(old), size=len(old))
    assert mirror_files([model], local_store, tokens=Tokens(), settings=SETTINGS).ok
    new = payload(2500, seed=2)
    hub.add_file("org/r", "m.safetensors", new)
    (change,) = check_upstream([model], local_store, Tokens())
    assert (change.kind, change.old, change.new, change.pinned) == (
        "newer-upstream",
        sha(old),
        sha(new),
        True,
    )
    assert "not replaced" in change.detail
    assert local_store.get_bytes(model.key) == old


def test_missing_and_unreachable(hub: FakeHub, local_store: ObjectStore) -> None:
    hub.add_file("org/r", "a.safetensors", payload(100))
    present = hf_model("a", "org/r", "a.safetensors")
    gone = hf_model("gone", "org/none", "x.safetensors")
    changes = check_upstream([present, gone], local_store, Tokens())
    assert kinds(changes) == [
        ("a", "not-mirrored"),
        ("gone", "not-mirrored"),
        ("gone", "unreachable"),
    ]
    assert "not found" in changes[2].detail
