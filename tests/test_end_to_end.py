"""The whole user journey through the real ``comfyfleet`` command line, in-process.

A user catalog on the Hugging Face test hub (a checkpoint and a LoRA in a profile, one more
LoRA in none) -> ``catalog validate`` -> ``mirror`` the profile into SeaweedFS (twice: the
second run downloads nothing) -> ``warmup`` into a ComfyUI root whose ComfyUI double lists the
files really placed on disk (twice: the second pull is empty) -> ``generate`` three jobs on
that ComfyUI (txt2img, txt2img with both LoRAs by catalog id -- the one outside the profile is
mirrored and pulled on demand -- and img2img from an image URL), outputs and
``results.parquet`` in the same bucket (twice: the rerun skips every job). Each step reads
only what the previous one wrote, so the pieces are proven to fit, not just to work alone.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyfleet import __version__
from comfyfleet.cli import main
from comfyfleet.generate.batch import read_results
from comfyfleet.store import open_store
from comfyfleet.store.manifest import read_manifest
from tests.doubles.comfyui import png_bytes
from tests.doubles.hf_hub import FakeHub
from tests.support.comfyui_launcher import DiskComfyUI
from tests.support.seaweed import SeaweedServer

REPO_BASE = "e2e-org/tiny-sdxl"
REPO_LORA = "e2e-user/tiny-style-lora"
CKPT_FILE = "tiny_sdxl_base.safetensors"
LORA_FILE = "tiny_style.safetensors"
DETAIL_FILE = "tiny_detail.safetensors"  # in the catalog, in no profile: pulled on demand
PROFILE = "e2e"
CAT_PNG = png_bytes(rgb=(200, 40, 10))


def blob(seed: str, size: int) -> bytes:
    """Deterministic incompressible bytes."""
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cdn_gets(hub: FakeHub) -> int:
    """File-byte downloads from the hub's CDN (metadata calls go to the hub itself)."""
    return sum(1 for r in hub.requests if r.server == "cdn" and r.method == "GET")


class FileServer:
    """Serves a directory over HTTP on 127.0.0.1: the job's input image 'on the web'."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        return


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "web"
    root.mkdir()
    (root / "cat.png").write_bytes(CAT_PNG)
    server = FileServer(root)
    yield server
    server.close()


@pytest.fixture
def s3_env(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    """The standard AWS variables pointing at the test SeaweedFS, as a user would set them."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.mark.s3
def test_catalog_mirror_warmup_generate_through_the_cli(
    hub: FakeHub,
    s3_env: SeaweedServer,
    s3_bucket: str,
    image_server: FileServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # ------------------------------------------------------------ the user's catalog
    ckpt, lora = blob("ckpt", 300_000), blob("lora", 200_000)
    ckpt_commit = hub.add_file(REPO_BASE, CKPT_FILE, ckpt)
    lora_commit = hub.add_file(REPO_LORA, f"lora/{LORA_FILE}", lora)
    detail = blob("detail", 100_000)
    detail_commit = hub.add_file(REPO_LORA, DETAIL_FILE, detail)
    catalog = tmp_path / "my-models.yaml"
    catalog.write_text(
        yaml.safe_dump(
            {
                "schema": 1,
                "models": [
                    {
                        "id": "tiny-base",
                        "kind": "checkpoint",
                        "folder": "checkpoints",
                        "file": CKPT_FILE,
                        "size": len(ckpt),
                        "sha256": sha(ckpt),
                        "source": {
                            "type": "hf",
                            "repo": REPO_BASE,
                            "revision": ckpt_commit,
                            "path": CKPT_FILE,
                        },
                        "tier": "must",
                        "min_vram_gb": 8,
                        "profiles": [PROFILE],
                    },
                    {
                        "id": "tiny-style",
                        "kind": "lora",
                        "folder": "loras",
                        "file": LORA_FILE,
                        "size": len(lora),
                        "sha256": sha(lora),
                        "source": {
                            "type": "hf",
                            "repo": REPO_LORA,
                            "revision": lora_commit,
                            "path": f"lora/{LORA_FILE}",
                        },
                        "profiles": [PROFILE],
                    },
                    {
                        "id": "tiny-detail",
                        "kind": "lora",
                        "folder": "loras",
                        "file": DETAIL_FILE,
                        "size": len(detail),
                        "sha256": sha(detail),
                        "source": {
                            "type": "hf",
                            "repo": REPO_LORA,
                            "revision": detail_commit,
                            "path": DETAIL_FILE,
                        },
                    },
                ],
                "profiles": {PROFILE: {"description": "end-to-end test", "min_vram_gb": 8}},
            },
            sort_keys=False,
        )
    )
    cat = ["--catalog", str(catalog)]
    store_uri = f"s3://{s3_bucket}/fleet"
    store = ["--store", store_uri]

    code, out, err = run_cli(capsys, "catalog", "validate", "--strict", *cat)
    assert code == 0, out + err

    # ------------------------------------------------------------ mirror, twice
    code, out, err = run_cli(capsys, "mirror", *cat, "--profile", PROFILE, *store, "--json")
    assert code == 0, err
    mirrored = json.loads(out)
    assert mirrored["ok"] and mirrored["manifest_written"] and mirrored["store"] == store_uri
    assert {r["id"]: r["status"] for r in mirrored["results"]} == {
        "tiny-base": "mirrored",
        "tiny-style": "mirrored",
    }
    bucket = open_store(store_uri)
    manifest = {e.id: e for e in read_manifest(bucket).entries}
    assert set(manifest) == {"tiny-base", "tiny-style"}
    assert (manifest["tiny-base"].key, manifest["tiny-base"].sha256) == (
        f"models/checkpoints/{CKPT_FILE}",
        sha(ckpt),
    )
    assert manifest["tiny-style"].size == len(lora)
    assert bucket.get_bytes(f"models/loras/{LORA_FILE}") == lora
    downloads = cdn_gets(hub)
    assert downloads == 2  # one GET per file: nothing fetched twice

    code, out, err = run_cli(capsys, "mirror", *cat, "--profile", PROFILE, *store, "--json")
    assert code == 0, err
    again = json.loads(out)
    assert [r["status"] for r in again["results"]] == ["skipped", "skipped"]
    assert cdn_gets(hub) == downloads  # zero bytes downloaded the second time

    # ------------------------------------------------------------ warm-up, twice
    root = tmp_path / "ComfyUI"
    root.mkdir()
    warm = [
        "warmup", *cat, "--profile", PROFILE, *store, "--comfy-root", str(root),
        "--vram-gb", "24", "--json",
    ]  # fmt: skip
    with DiskComfyUI(root) as comfy:
        code, out, err = run_cli(capsys, *warm, "--comfy-url", comfy.url)
        assert code == 0, err
        first = json.loads(out)
        assert first["ok"] is True and first["profile"]["name"] == PROFILE
        phases = {p["name"]: p for p in first["phases"]}
        assert list(phases) == [
            "preflight", "verify", "pull", "place", "comfy_boot", "first_prompt",
        ]  # fmt: skip
        assert phases["pull"]["bytes"] == len(ckpt) + len(lora)
        assert (root / "models" / "checkpoints" / CKPT_FILE).read_bytes() == ckpt
        assert (root / "models" / "loras" / LORA_FILE).read_bytes() == lora
        # ComfyUI (reading the disk) lists exactly what the warm-up placed.
        assert first["comfy"]["ready"] is True
        assert sorted(first["comfy"]["models_listed"]) == [
            f"models/checkpoints/{CKPT_FILE}",
            f"models/loras/{LORA_FILE}",
        ]

        code, out, err = run_cli(capsys, *warm, "--comfy-url", comfy.url)
        assert code == 0, err
        second = json.loads(out)
        assert second["ok"] is True and second["published"]["history_rows"] == 2
        assert next(p for p in second["phases"] if p["name"] == "pull")["bytes"] == 0
        assert second["record"]["files_present"] == 2 and second["record"]["files_placed"] == 0
        assert cdn_gets(hub) == downloads  # warm-up reads the mirror, never the source

        # ------------------------------------------------------------ generate, twice
        jobs = tmp_path / "jobs.csv"
        with jobs.open("w", newline="") as f:
            writer = csv.DictWriter(
                f, ["id", "workflow", "prompt", "checkpoint", "loras", "seed", "steps", "image"]
            )
            writer.writeheader()
            writer.writerows([
                {"id": "plain", "workflow": "sdxl_txt2img", "prompt": "a fox",
                 "checkpoint": CKPT_FILE, "seed": "1", "steps": "4"},
                {"id": "styled", "workflow": "sdxl_txt2img", "prompt": "a fox, styled",
                 "checkpoint": CKPT_FILE, "loras": "tiny-style:0.8;tiny-detail:0.5",
                 "seed": "2", "steps": "4"},
                {"id": "redo", "workflow": "img2img", "prompt": "the cat, in oil",
                 "checkpoint": CKPT_FILE, "seed": "3", "steps": "4",
                 "image": image_server.url("cat.png")},
            ])  # fmt: skip
        gen = [
            "generate", str(jobs), "--comfy-url", comfy.url, *store, "--batch-id", "b1",
            "--comfy-root", str(root), *cat, "--no-fal", "--json",
        ]  # fmt: skip
        code, out, err = run_cli(capsys, *gen)
        assert code == 0, out + err
        report = json.loads(out)
        assert report["counts"] == {"ok": 3, "failed": 0, "skipped": 0}
        assert report["results"] == "outputs/b1/results.parquet"

        # What ComfyUI was asked to do: the placed checkpoint, the LoRA by its file name,
        # the input image uploaded first.
        graphs = [item[2] for item in comfy.accepted]
        assert len(graphs) == 3
        ckpt_names = {
            n["inputs"]["ckpt_name"]
            for g in graphs
            for n in g.values()
            if n["class_type"] == "CheckpointLoaderSimple"
        }
        assert ckpt_names == {CKPT_FILE}
        lora_loaders = [
            n["inputs"] for g in graphs for n in g.values() if n["class_type"] == "LoraLoader"
        ]
        assert [(n["lora_name"], n["strength_model"]) for n in lora_loaders] == [
            (LORA_FILE, 0.8),
            (DETAIL_FILE, 0.5),
        ]
        # The LoRA outside the profile was mirrored from the hub, recorded in the manifest
        # and pulled into the root on demand; ComfyUI listed it before the prompt went in.
        assert (root / "models" / "loras" / DETAIL_FILE).read_bytes() == detail
        assert cdn_gets(hub) == downloads + 1
        pulled = read_manifest(bucket).by_id()["tiny-detail"]
        assert (pulled.key, pulled.sha256) == (f"models/loras/{DETAIL_FILE}", sha(detail))
        (upload,) = [key for key in comfy.files if key[0] == "input"]
        assert comfy.files[upload] == CAT_PNG
        loaded = [
            n["inputs"]["image"]
            for g in graphs
            for n in g.values()
            if n["class_type"] == "LoadImage"
        ]
        assert loaded == [upload[2]]

        rerun_code, rerun_out, rerun_err = run_cli(capsys, *gen)
        accepted_after_rerun = len(comfy.accepted)

    rows = {r["id"]: r for r in read_results(bucket, "b1")}
    assert {i: r["status"] for i, r in rows.items()} == {
        "plain": "ok",
        "styled": "ok",
        "redo": "ok",
    }
    for job_id, row in rows.items():
        assert row["outputs"], job_id
        for key in row["outputs"]:
            assert key.startswith(f"outputs/b1/{job_id}/"), key
            assert bucket.get_bytes(key).startswith(b"\x89PNG"), key
    assert (rows["styled"]["loras"], rows["plain"]["loras"]) == ([LORA_FILE, DETAIL_FILE], [])

    assert rerun_code == 0, rerun_out + rerun_err
    rerun = json.loads(rerun_out)
    assert rerun["counts"] == {"ok": 0, "failed": 0, "skipped": 3}
    assert accepted_after_rerun == 3  # nothing queued again
    assert len(read_results(bucket, "b1")) == 3


def test_module_entry_point_prints_the_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "comfyfleet", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"comfyfleet {__version__}"


# ------------------------------------------------------------- the test session itself


@pytest.mark.flow
@pytest.mark.s3
def test_a_test_session_leaves_nothing_in_tmpdir_or_home(tmp_path: Path) -> None:
    """Issue 9 item 18: a pytest run that draws a timeline (matplotlib), starts SeaweedFS and
    a Prefect test server leaves its TMPDIR and HOME as it found them (empty here)."""
    tmpdir, home = tmp_path / "tmpdir", tmp_path / "home"
    tmpdir.mkdir()
    home.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "TMPDIR": str(tmpdir)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/warmup/test_reports.py",
            "tests/test_blocks.py::test_store_block_reaches_seaweedfs",
            "tests/test_deployments.py::test_pools_are_created_once",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout
    assert sorted(p.name for p in tmpdir.iterdir()) == []
    assert sorted(p.name for p in home.iterdir()) == []
