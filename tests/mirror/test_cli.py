"""``comfyfleet mirror`` and ``comfyfleet lora add`` in-process, against the test hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet.cli import main
from comfyfleet.store.local import LocalStore
from comfyfleet.store.manifest import read_manifest
from tests.doubles.hf_hub import FakeHub
from tests.mirror.support import payload, sha


def write_catalog(path: Path, models: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"schema": 1, "models": models}, sort_keys=False))
    return path


def hf_entry(model_id: str, repo: str, file: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "folder": "loras",
        "file": file,
        "source": {"type": "hf", "repo": repo, "revision": "main", "path": file},
        **extra,
    }


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_mirror_command_json_then_skip(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = payload(120_000, seed=1), payload(80_000, seed=2)
    hub.add_file("org/l", "a.safetensors", a)
    hub.add_file("org/l", "b.safetensors", b)
    catalog = write_catalog(
        tmp_path / "cat.yaml",
        [
            hf_entry("lora-a", "org/l", "a.safetensors", sha256=sha(a), size=len(a)),
            hf_entry("lora-b", "org/l", "b.safetensors"),
        ],
    )
    store = tmp_path / "store"
    args = ["mirror", "--catalog", str(catalog), "--only", "lora-a", "lora-b"]
    code, doc, err = run_json(capsys, *args, "--store", str(store), "--json")
    assert code == 0, err
    assert doc["ok"] and doc["manifest_written"]
    assert [(r["id"], r["status"]) for r in doc["results"]] == [
        ("lora-a", "mirrored"),
        ("lora-b", "mirrored"),
    ]
    assert doc["results"][1]["sha256"] == sha(b)
    assert {e.id for e in read_manifest(LocalStore(store)).entries} == {"lora-a", "lora-b"}

    code, doc, _ = run_json(capsys, *args, "--store", str(store), "--json")
    assert code == 0 and [r["status"] for r in doc["results"]] == ["skipped", "skipped"]


def test_mirror_command_lists_each_failure_and_exits_nonzero(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add_file("org/l", "a.safetensors", payload(1000))
    catalog = write_catalog(
        tmp_path / "cat.yaml",
        [
            hf_entry("good", "org/l", "a.safetensors"),
            hf_entry("gone", "org/l", "missing.safetensors"),
            hf_entry("nope", "org/none", "x.safetensors"),
        ],
    )
    code = main(
        ["mirror", "--catalog", str(catalog), "--profile", "full", "--store", str(tmp_path / "s")]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert "good" in out and "1 mirrored" in out and "2 failed" in out
    failures = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failures) == 2
    assert failures[0].startswith("failed: gone: SourceNotFound") and "not found" in failures[0]
    assert failures[1].startswith("failed: nope: SourceNotFound")


def test_mirror_command_bad_input_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = write_catalog(tmp_path / "cat.yaml", [hf_entry("a", "org/l", "a.safetensors")])
    code = main(["mirror", "--catalog", str(catalog), "--only", "zzz", "--store", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown model id 'zzz'" in err
    code = main(["mirror", "--catalog", str(catalog), "--parallel", "0", "--store", str(tmp_path)])
    assert code == 2 and "--parallel must be at least 1" in capsys.readouterr().err


def test_lora_add_hf_link_writes_pinned_entry_and_mirrors(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = payload(64_000)
    commit = hub.add_file("someone/detail-lora", "Detail Tweaker XL.safetensors", data)
    catalog = tmp_path / "loras.yaml"
    store = tmp_path / "store"
    link = "https://huggingface.co/someone/detail-lora/blob/main/Detail%20Tweaker%20XL.safetensors"
    code, doc, err = run_json(
        capsys, "lora", "add", link, "--catalog", str(catalog), "--store", str(store), "--json"
    )
    assert code == 0, err
    entry = doc["entry"]
    assert entry["id"] == "detail-tweaker-xl"
    assert entry["sha256"] == sha(data) and entry["size"] == len(data)
    assert entry["source"] == {
        "type": "hf",
        "repo": "someone/detail-lora",
        "revision": commit,  # pinned to the commit main pointed at
        "path": "Detail Tweaker XL.safetensors",
    }
    written = yaml.safe_load(catalog.read_text())
    assert written["models"] == [entry]
    assert written["models"][0]["profiles"] == [] and written["models"][0]["folder"] == "loras"
    assert doc["mirrored"]["status"] == "mirrored"
    assert LocalStore(store).get_bytes("models/loras/Detail Tweaker XL.safetensors") == data


def test_lora_add_keeps_other_entries_and_comments_and_refuses_duplicates(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add_file("o/r", "one.safetensors", payload(1000, seed=1))
    hub.add_file("o/r", "two.safetensors", payload(1000, seed=2))
    catalog = tmp_path / "loras.yaml"
    catalog.write_text(
        "# my loras, hand-written\nschema: 1\nmodels:\n"
        "  - id: mine\n    folder: loras\n    file: mine.safetensors   # keep me\n"
        "    source: {type: url, url: 'https://example.invalid/mine.safetensors'}\n"
    )
    link = "https://huggingface.co/o/r/resolve/main/one.safetensors"
    assert main(["lora", "add", link, "--catalog", str(catalog), "--no-mirror"]) == 0
    text = catalog.read_text()
    assert "# my loras, hand-written" in text and "# keep me" in text
    assert [m["id"] for m in yaml.safe_load(text)["models"]] == ["mine", "one"]
    capsys.readouterr()

    # Same file again: refused, file untouched.
    assert main(["lora", "add", link, "--catalog", str(catalog), "--id", "other"]) == 2
    err = capsys.readouterr().err
    assert "already writes models/loras/one.safetensors" in err
    # Same id, other file: refused.
    link2 = "https://huggingface.co/o/r/resolve/main/two.safetensors"
    assert main(["lora", "add", link2, "--catalog", str(catalog), "--id", "mine"]) == 2
    assert "id 'mine' is already used" in capsys.readouterr().err
    assert catalog.read_text() == text
    assert not list(tmp_path.glob(".loras.yaml.*"))  # no temp file left behind


def test_lora_add_rejects_what_is_not_a_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["lora", "add", "https://example.com/x.safetensors", "--catalog", str(tmp_path)])
    assert code == 2
    assert "not a Hugging Face or CivitAI link" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("before", "kept"),
    [
        ("# only a comment\n", ["# only a comment"]),
        (  # models is not the last block: rewritten, every entry and profile kept
            "schema: 1\nmodels:\n- id: mine\n  folder: loras\n  file: mine.safetensors\n"
            "  source: {type: url, url: 'https://example.invalid/m.safetensors'}\n"
            "profiles:\n  mine: {models: [mine]}\n",
            [],
        ),
    ],
)
def test_lora_add_into_other_file_layouts(
    hub: FakeHub, tmp_path: Path, before: str, kept: list[str]
) -> None:
    hub.add_file("o/r", "one.safetensors", payload(500))
    catalog = tmp_path / "loras.yaml"
    catalog.write_text(before)
    link = "https://huggingface.co/o/r/blob/main/one.safetensors"
    assert main(["lora", "add", link, "--catalog", str(catalog), "--no-mirror"]) == 0
    text = catalog.read_text()
    for line in kept:
        assert line in text
    data = yaml.safe_load(text)
    assert data["models"][-1]["id"] == "one"
    if "profiles" in before:
        assert data["profiles"] == {"mine": {"models": ["mine"]}}
        assert [m["id"] for m in data["models"]] == ["mine", "one"]


def test_mirror_user_catalog_without_profile_takes_every_entry_of_it(
    hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.add_file("org/l", "a.safetensors", payload(1000, seed=1))
    hub.add_file("org/l", "b.safetensors", payload(1000, seed=2))
    catalog = write_catalog(
        tmp_path / "user.yaml",
        [hf_entry("a", "org/l", "a.safetensors"), hf_entry("b", "org/l", "b.safetensors")],
    )
    store = str(tmp_path / "store")
    code, doc, err = run_json(
        capsys, "mirror", "--catalog", str(catalog), "--store", store, "--json"
    )
    assert code == 0, err
    assert [(r["id"], r["status"]) for r in doc["results"]] == [
        ("a", "mirrored"),
        ("b", "mirrored"),
    ]
    # With the built-in catalog named too, still only the user's entries.
    code, doc, err = run_json(
        capsys,
        "mirror",
        "--catalog",
        "builtin",
        "--catalog",
        str(catalog),
        "--store",
        store,
        "--json",
    )
    assert code == 0, err
    assert [(r["id"], r["status"]) for r in doc["results"]] == [("a", "skipped"), ("b", "skipped")]


def test_mirror_help_names_the_default_and_profiles_never_suggest_auto(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mirror", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "with --catalog, every entry of the given files" in text
    assert "'minimal' profile" in text
    catalog = write_catalog(tmp_path / "user.yaml", [hf_entry("a", "org/l", "a.safetensors")])
    store = str(tmp_path / "store")
    for profile, fact in (("nope", "unknown profile 'nope'"), ("auto", "concrete profile")):
        code = main(["mirror", "--catalog", str(catalog), "--profile", profile, "--store", store])
        err = capsys.readouterr().err
        assert code == 2 and fact in err, err
        hint = next(line for line in err.splitlines() if line.startswith("hint:"))
        assert "auto" not in hint, hint
