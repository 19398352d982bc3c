"""``comfyfleet catalog list|validate|show``, run in-process."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.catalog import builtin_catalog_path, load_catalog
from comfyfleet.cli import main
from comfyfleet.comfy.folders import KNOWN_FOLDERS

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = str(REPO / "catalog" / "loras.example.yaml")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def write(tmp_path: Path, text: str, name: str = "user.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_list_full_json_has_every_file_with_its_sha256(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "catalog", "list", "--profile", "full")
    catalog = load_catalog()
    assert [m["id"] for m in data["models"]] == list(catalog.models)
    for model in data["models"]:
        assert model["key"] == f"models/{model['folder']}/{model['file']}"
        if model["sha256"] is None:
            # Only entries that say so may lack the hash.
            assert model["verified"] == "unverified", model["id"]
            assert "sha256" in model["notes"].lower(), model["id"]
        else:
            assert HEX64.match(model["sha256"]), model["id"]
            assert isinstance(model["size"], int) and model["size"] > 0
        assert model["source"]["type"] in ("hf", "civitai")
        assert model["source_display"]
        assert "full" in model["member_of"]
    with_hash = [m for m in data["models"] if m["sha256"]]
    assert len(with_hash) >= 16
    assert list(data["profiles"]) == ["full"]
    full = data["profiles"]["full"]
    assert full["count"] == len(catalog.models)
    assert full["total_bytes"] == catalog.total_size()
    assert full["min_vram_gb"] == 40


def test_list_json_storage_table_covers_every_profile(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "catalog", "list")
    assert sorted(data["profiles"]) == ["full", "image", "minimal", "video-24gb"]
    minimal = data["profiles"]["minimal"]
    assert minimal["models"] == ["sdxl-base-1.0", "sdxl-vae-fp16-fix"]
    assert minimal["total_bytes"] == 6938078334 + 334641162
    assert minimal["min_vram_gb"] == 8
    sizes = {m["id"]: m["size"] or m["size_estimate"] or 0 for m in data["models"]}
    for profile in data["profiles"].values():
        assert profile["total_bytes"] == sum(sizes[i] for i in profile["models"])
    assert data["catalogs"] == [str(builtin_catalog_path())]


def test_list_minimal_lists_exactly_two_files(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(capsys, "catalog", "list", "--profile", "minimal")
    assert [m["key"] for m in data["models"]] == [
        "models/checkpoints/sd_xl_base_1.0.safetensors",
        "models/vae/sdxl_vae_fp16_fix.safetensors",
    ]


def test_list_table(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "catalog", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "FILE", "SIZE", "TIER", "SOURCE", "VERIFIED"]
    row = next(line for line in lines if line.startswith("sdxl-base-1.0 "))
    assert row.split() == [
        "sdxl-base-1.0",
        "checkpoints/sd_xl_base_1.0.safetensors",
        "6.5",
        "GiB",
        "must",
        "hf://stabilityai/stable-diffusion-xl-base-1.0@462165984030/sd_xl_base_1.0.safetensors",
        "verified-secondary",
    ]
    for mid in load_catalog().models:
        assert any(line.startswith(mid + " ") for line in lines), mid
    minimal = next(line for line in lines if line.startswith("minimal "))
    assert minimal.split()[:5] == ["minimal", "2", "6.8", "GiB", "8"]
    assert any(line.startswith("PROFILE ") for line in lines)


def test_user_catalog_joins_full_and_named_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    base = run_json(capsys, "catalog", "list")
    merged = run_json(capsys, "catalog", "list", "--catalog", "builtin", "--catalog", EXAMPLE)
    ids = [m["id"] for m in merged["models"]]
    assert ids[-2:] == ["example-style-lora", "example-detail-lora"]
    assert merged["profiles"]["full"]["count"] == base["profiles"]["full"]["count"] + 2
    assert merged["profiles"]["image"]["models"] == [
        *base["profiles"]["image"]["models"],
        "example-style-lora",
    ]
    assert merged["profiles"]["my-loras"]["count"] == 4
    assert merged["profiles"]["my-loras"]["unknown_size"] == [
        "example-style-lora",
        "example-detail-lora",
    ]
    lora = merged["models"][-2]
    assert lora["source"]["version_id"] == 234567 and lora["sha256"] is None


def test_list_unknown_profile_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "catalog", "list", "--profile", "huge")
    assert code == 2 and out == ""
    assert err.splitlines()[0] == "error: unknown profile 'huge'"
    assert "hint: known profiles: full, image, minimal, video-24gb\n" in err + "\n"  # no auto here


def test_validate_builtin_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "catalog", "validate")
    assert code == 0
    assert out.startswith(f"ok: 36 models, 4 profiles in {builtin_catalog_path()}")
    assert all(line.startswith("warning: ") for line in err.splitlines())


def test_validate_with_user_file_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "catalog", "validate", "--catalog", "builtin", "--catalog", EXAMPLE)
    assert code == 0
    assert out.startswith(f"ok: 38 models, 5 profiles in {builtin_catalog_path()}, {EXAMPLE}")


def test_validate_reports_each_problem_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """\
        schema: 1
        models:
          - id: short-hash
            folder: loras
            file: a.safetensors
            sha256: "1234"
            source: {type: hf, repo: a/b, path: a.safetensors}
          - id: wrong-folder
            folder: lora
            file: b.safetensors
            source: {type: civitai, url: "https://civitai.com/models/1?modelVersionId=2"}
          - id: no-source
            folder: loras
            file: c.safetensors
          - id: my-vae
            folder: vae
            file: sdxl_vae.safetensors
            source: {type: url, url: "https://example.com/vae.safetensors"}
        profiles:
          mine: {models: [short-hash, ghost]}
        """,
    )
    code, out, err = run(capsys, "catalog", "validate", "--catalog", "builtin", "--catalog", path)
    assert code == 2 and out == ""
    problems = [line for line in err.splitlines() if not line.startswith(("warning:", "hint:"))]
    assert problems == [
        f"{path}: entry no-source: field 'source': is required but missing",
        f"{path}: entry short-hash: field 'sha256': must be 64 hex characters, got 4",
        f"{path}: entry wrong-folder: field 'folder': unknown ComfyUI folder 'lora' (known: "
        + ", ".join(sorted(KNOWN_FOLDERS))
        + ")",
        f"{path}: entry my-vae: field 'file': writes models/vae/sdxl_vae.safetensors, the same "
        f"target as entry sdxl-vae ({builtin_catalog_path()}); rename one of them",
        f"{path}: profile mine: field 'models': unknown model id 'ghost'",
        f"error: 5 problem(s) in {builtin_catalog_path()}, {path}",
    ]


def test_validate_strict_turns_warnings_into_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        """\
        models:
          - id: loose
            folder: loras
            file: a.safetensors
            source: {type: hf, repo: a/b, revision: main, path: a.safetensors}
        """,
    )
    code, out, err = run(capsys, "catalog", "validate", "--catalog", path)
    assert code == 0 and out.startswith("ok: 1 models, 1 profiles") and "(2 warnings)" in out
    code, out, err = run(capsys, "catalog", "validate", "--strict", "--catalog", path)
    assert code == 2 and out == ""
    assert f"{path}: entry loose: field 'source.revision': 'main' is a branch" in err
    assert f"{path}: entry loose: field 'sha256': unknown" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "does not exist"),
        ("models: [\n", "not valid YAML"),
    ],
)
def test_validate_unreadable_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, expected: str
) -> None:
    path = write(tmp_path, text) if text is not None else str(tmp_path / "missing.yaml")
    code, out, err = run(capsys, "catalog", "validate", "--catalog", path)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and expected in err.splitlines()[0] and path in err


def test_show_prints_the_whole_entry(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "catalog", "show", "pony-diffusion-v6-xl")
    assert code == 0
    assert out.splitlines()[:8] == [
        "id: pony-diffusion-v6-xl",
        "name: Pony Diffusion V6 XL (V6, start with this one)",
        "kind: checkpoint",
        "key: models/checkpoints/ponyDiffusionV6XL_v6StartWithThisOne.safetensors",
        "folder: checkpoints",
        "file: ponyDiffusionV6XL_v6StartWithThisOne.safetensors",
        "size: 6938041050 (6.5 GiB)",
        "sha256: 67ab2fd8ec439a89b3fedb15cc65f54336af163c7eb5e4f2acc98f090a29b0b3",
    ]
    assert "repo: AstraliteHeart/pony-diffusion-v6" in out  # the HF alternate
    assert "version_id: 290640" in out


def test_show_json_and_unknown_id(capsys: pytest.CaptureFixture[str]) -> None:
    record = run_json(capsys, "catalog", "show", "svd-xt")
    assert record["gated"] is True and record["member_of"] == ["full", "video-24gb"]
    code, out, err = run(capsys, "catalog", "show", "no-such-model")
    assert code == 2 and out == ""
    assert err.splitlines()[0] == "error: unknown model id 'no-such-model'"


def test_validate_json_is_one_document_with_problems_and_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["catalog", "validate", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True and result["problems"] == [] and result["strict"] is False
    assert result["models"] > 0 and result["profiles"] >= 4
    assert all(isinstance(w, str) for w in result["warnings"])

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models:\n  - {id: x, name: X, kind: lora, folder: nowhere, file: x.safetensors,\n"
        "     source: {type: url, url: 'https://example.com/x.safetensors'}}\n"
    )
    assert main(["catalog", "validate", "--json", "--catalog", str(bad)]) == 2
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["ok"] is False and err == ""
    assert any("unknown ComfyUI folder 'nowhere'" in p for p in result["problems"])
    # --strict moves the warnings (here: unknown sha256) into the problems.
    assert main(["catalog", "validate", "--json", "--strict", "--catalog", str(bad)]) == 2
    strict = json.loads(capsys.readouterr().out)
    assert strict["warnings"] == [] and len(strict["problems"]) > len(result["problems"])


def test_shipped_catalog_strict_failures_are_each_explained_in_the_readme(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 9 item 17: `catalog validate --strict` on the shipped catalog either passes or
    the README's `catalog validate` row names every entry that fails it (and why)."""
    code = main(["catalog", "validate", "--strict", "--json"])
    result = json.loads(capsys.readouterr().out)
    failing = {re.search(r": entry ([^:]+): ", p).group(1) for p in result["problems"]}  # type: ignore[union-attr]
    assert code == (2 if failing else 0)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (row,) = [
        line for line in readme.splitlines() if line.startswith("| `comfyfleet catalog validate")
    ]
    named = set(re.findall(r"`([a-z0-9][a-z0-9._-]*)`", row))
    assert failing <= named, f"not explained in the README: {sorted(failing - named)}"
    known = set(load_catalog().models)
    assert named & known == failing, "the README names entries that pass --strict now"
