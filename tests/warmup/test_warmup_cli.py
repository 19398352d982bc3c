"""``comfyfleet warmup`` / ``comfyfleet bake``: output, JSON, exit codes, reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.cli import main
from comfyfleet.warmup.lock import RootLock
from comfyfleet.warmup.reports import read_history
from tests.support.comfyui_launcher import DiskComfyUI

from .mirrored import content, mirrored_root, profile_bytes


@pytest.fixture
def setup(tmp_path: Path, local_store: Any) -> dict[str, Any]:
    root, args = mirrored_root(tmp_path, local_store)
    return {"store": local_store, "root": root, "args": args}


def test_json_is_one_document_with_the_phases(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["warmup", *setup["args"], "--vram-gb", "12", "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)  # nothing else on stdout
    assert data["ok"] is True and data["verdict"] == "PASS"
    assert [p["name"] for p in data["phases"]] == [
        "preflight",
        "verify",
        "pull",
        "place",
        "comfy_boot",
        "first_prompt",
    ]
    pull = next(p for p in data["phases"] if p["name"] == "pull")
    assert pull["bytes"] == profile_bytes("image") and pull["mb_per_s"] > 0
    assert data["profile"]["name"] == "image"
    assert data["record"]["vram_gb"] == 12.0 and data["record"]["vram_source"] == "override"
    assert data["published"]["history_rows"] == 1
    assert "> pull" in err  # phase lines and the progress bar go to stderr
    assert (setup["root"] / "models/loras/style.safetensors").read_bytes() == content("style")


def test_table_output_and_history_appended_twice(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "timeline.png"
    assert main(["warmup", *setup["args"], "--gpu", "none", "--timeline", str(png)]) == 0
    out = capsys.readouterr().out
    assert "cold start PASS" in out
    assert "profile minimal: no GPU: the smallest profile" in out
    for phase in ("preflight", "verify", "pull", "place", "comfy_boot", "first_prompt", "total"):
        assert phase in out
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000
    assert main(["warmup", *setup["args"], "--gpu", "none"]) == 0
    history = read_history(setup["store"])
    assert len(history) == 2
    assert history["bytes_downloaded"].tolist() == [profile_bytes("minimal"), 0]
    assert main(["warmup", *setup["args"], "--gpu", "none", "--no-history"]) == 0
    assert len(read_history(setup["store"])) == 2


def test_missed_target_fails_only_with_fail_on_target(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = ["--vram-gb", "12", "--target-s", "0.000001", "--json"]
    assert main(["warmup", *setup["args"], *tiny]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "MISS"
    assert main(["warmup", *setup["args"], *tiny, "--fail-on-target"]) == 3
    out, err = capsys.readouterr()
    assert json.loads(out)["passed"] is False
    assert "error: cold start MISS" in err


def test_a_failure_exits_non_zero_with_error_and_hint(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with RootLock(setup["root"]):
        code = main(["warmup", *setup["args"], "--vram-gb", "12", "--json"])
    assert code == 1
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["ok"] is False and data["error"]["type"] == "LockHeldError"
    assert err.splitlines()[-2].startswith("error: warm-up lock")
    assert err.splitlines()[-1].startswith("hint: ")
    # Bad input is exit 2: a profile above the GPU, without --force.
    assert main(["warmup", *setup["args"], "--vram-gb", "12", "--profile", "video-24gb"]) == 2
    assert "needs 24 GB VRAM" in capsys.readouterr().err
    # The failures were recorded too.
    verdicts = read_history(setup["store"])["verdict"].tolist()
    assert verdicts == ["FAIL", "FAIL"]


def test_models_dir_that_is_a_file_is_bad_input(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_dir = tmp_path / "jobs.csv"
    not_a_dir.write_text("id\n")
    args = [*setup["args"], "--gpu", "none", "--models-dir", str(not_a_dir)]
    assert main(["warmup", *args]) == 2
    err = capsys.readouterr().err
    assert f"error: models folder {not_a_dir} is a file, not a directory" in err
    assert "hint: pass --models-dir a directory" in err and "Traceback" not in err


def test_comfy_url_readiness_through_the_cli(
    setup: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    with DiskComfyUI(setup["root"]) as fake:
        assert main(["warmup", *setup["args"], "--vram-gb", "12", "--comfy-url", fake.url]) == 0
    out = capsys.readouterr().out
    assert "ComfyUI 0.3.64 at http://127.0.0.1:" in out
    assert "3 model file(s) listed" in out


def test_bake_then_warmup_baked(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "opt" / "models"
    manifest = tmp_path / "opt" / "baked-manifest.json"
    catalog_args = setup["args"][4:]
    assert (
        main(
            [
                "bake",
                "--store",
                setup["store"].uri,
                *catalog_args,
                "--profile",
                "image",
                "--models-dir",
                str(models),
                "--manifest-out",
                str(manifest),
                "--json",
            ]
        )
        == 0
    )
    baked = json.loads(capsys.readouterr().out)
    assert baked["files"] == 3 and baked["bytes_downloaded"] == profile_bytes("image")
    code = main(
        [
            "warmup",
            "--comfy-root",
            str(setup["root"]),
            "--mode",
            "baked",
            "--gpu",
            "none",
            "--baked-manifest",
            str(manifest),
            "--json",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "baked" and data["target_s"] == 120.0
    assert data["published"]["history_key"] is None  # no store given: nothing to append to
    assert {f["verified"] for f in data["files"]} == {"mtime"}
    assert (
        main(
            [
                "bake",
                "--store",
                setup["store"].uri,
                "--profile",
                "auto",
                "--models-dir",
                str(models),
                "--manifest-out",
                str(manifest),
            ]
        )
        == 2
    )


def _timelines(store: Any) -> list[str]:
    return [o.key for o in store.list("reports/") if o.key.endswith(".png")]


def test_failed_refused_or_no_history_warmups_store_no_timeline(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, root, args = setup["store"], setup["root"], setup["args"]
    with RootLock(root):  # refused: another warm-up holds the root
        assert main(["warmup", *args, "--gpu", "none", "--json"]) == 1
    missing = [a if a != str(root) else str(tmp_path / "no-such-root") for a in args]
    assert main(["warmup", *missing, "--gpu", "none", "--json"]) == 2
    assert [r["verdict"] for r in read_history(store).to_dict("records")] == ["FAIL", "FAIL"]
    assert _timelines(store) == []
    assert main(["warmup", *args, "--gpu", "none", "--no-history", "--json"]) == 0
    assert _timelines(store) == []
    assert main(["warmup", *args, "--gpu", "none", "--json"]) == 0
    assert len(_timelines(store)) == 1
    capsys.readouterr()
