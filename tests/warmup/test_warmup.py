"""warm_up end to end: store (LocalStore and SeaweedFS) -> temp ComfyUI root -> ComfyUI
test double (readiness = models listed) -> first prompt, with every refusal on the way."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.errors import ComfyError, ConfigError, InsufficientDiskError, LockHeldError
from comfyfleet.warmup.baked import check_baked, read_baked_manifest
from comfyfleet.warmup.driver import WarmupResult, bake, load_workflow, warm_up
from comfyfleet.warmup.lock import RootLock
from comfyfleet.warmup.options import WarmupOptions
from tests.comfy.graphs import txt2img
from tests.support.comfyui_launcher import DiskComfyUI

from .mirrored import MODELS, catalog, content, facts, mirror, profile_bytes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "ComfyUI"
    path.mkdir()
    (path / "main.py").write_text("# ComfyUI\n")
    return path


@pytest.fixture
def comfy(root: Path) -> Iterator[DiskComfyUI]:
    with DiskComfyUI(root) as fake:
        yield fake


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "warmup.json"
    path.write_text(json.dumps(txt2img("base.safetensors")))
    return path


def run_warmup(*, store: Any, catalog: Any, facts: Any = None, **options: Any) -> WarmupResult:
    """``warm_up`` with the options given as keywords (no history: these tests check files)."""
    options.setdefault("history", False)
    return warm_up(WarmupOptions(**options), store=store, catalog=catalog, facts=facts)


def placed(root: Path, model_id: str) -> Path:
    folder, file, _ = MODELS[model_id]
    return root / "models" / folder / file


def no_partial_files(base: Path) -> bool:
    return not any(p.name.endswith((".part", ".journal")) for p in base.rglob("*"))


@pytest.mark.parametrize(
    "store", ["local", pytest.param("s3", marks=pytest.mark.s3)], indirect=True
)
def test_full_warmup_into_a_temp_comfyui_root(
    store: Any, root: Path, tmp_path: Path, comfy: DiskComfyUI, workflow_file: Path
) -> None:
    mirror(store)
    cat = catalog(tmp_path)
    result = run_warmup(
        store=store,
        comfy_root=root,
        catalog=cat,
        facts=facts(root, 24),
        comfy_url=comfy.url,
        warmup_workflow=workflow_file,
        boot_timeout_s=20,
        prompt_timeout_s=20,
    )
    assert result.ok, result.error
    assert result.profile is not None and result.profile.name == "video-24gb"
    for model_id in ("base", "vae", "wan", "umt5", "cog-config"):
        assert placed(root, model_id).read_bytes() == content(model_id)
    assert not placed(root, "style").exists()  # not in the profile
    assert no_partial_files(root)
    record = result.record
    assert record.verdict == "PASS"
    assert record.bytes_downloaded == profile_bytes("video-24gb")
    assert record.files_placed == 5 and record.files_present == 0
    phases = {p.name: p for p in record.phases}
    assert phases["pull"].bytes == profile_bytes("video-24gb")
    assert all(p.status == "ok" for p in record.phases), [(p.name, p.status) for p in record.phases]
    # Ready means listed: every model file ComfyUI can list was seen in /models/<folder>.
    assert result.comfy is not None and result.comfy.ready
    assert "models/checkpoints/base.safetensors" in result.comfy.models_listed
    assert "models/CogVideo/CogVideoX-5b/transformer/config.json" in result.comfy.models_listed
    assert ("GET", "/models/checkpoints") in comfy.requests
    # The first prompt ran in ComfyUI, loading the checkpoint.
    assert result.first_prompt is not None and result.first_prompt["prompt_id"]
    assert len(comfy.timeline) == 1
    data = json.loads(json.dumps(result.to_dict()))
    assert [p["name"] for p in data["phases"]][:3] == ["preflight", "verify", "pull"]

    # Second warm-up: every file is present, trusted by its marker, nothing fetched.
    again = run_warmup(
        store=store,
        comfy_root=root,
        catalog=cat,
        facts=facts(root, 24),
        comfy_url=comfy.url,
        boot_timeout_s=20,
    )
    assert again.ok and again.record.bytes_downloaded == 0
    assert {f["status"] for f in again.files} == {"present"}
    assert {f["verified"] for f in again.files} == {"marker"}
    assert again.record.phase("pull").note == "nothing to fetch"  # type: ignore[union-attr]
    assert again.record.phase("first_prompt").status == "skipped"  # type: ignore[union-attr]


def test_verify_full_rehashes_and_a_wrong_file_is_replaced(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    cat = catalog(tmp_path)
    kwargs: dict[str, Any] = dict(
        store=local_store, comfy_root=root, catalog=cat, facts=facts(root, 12), profile="minimal"
    )
    assert run_warmup(**kwargs).ok
    target = placed(root, "base")
    damaged = bytearray(target.read_bytes())
    damaged[100] ^= 0xFF
    target.write_bytes(bytes(damaged))  # same size, other bytes: never trusted
    result = run_warmup(**kwargs, verify="full")
    assert result.ok
    statuses = {f["key"]: f["status"] for f in result.files}
    assert statuses["models/checkpoints/base.safetensors"] == "replaced"
    assert target.read_bytes() == content("base")
    assert result.record.phase("verify").bytes == profile_bytes("minimal")  # type: ignore[union-attr]


def test_disk_too_small_is_refused_before_any_byte(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    result = run_warmup(
        store=local_store,
        comfy_root=root,
        catalog=catalog(tmp_path),
        facts=facts(root, 24, free=50_000),
        profile="image",
    )
    assert not result.ok
    assert result.error is not None and result.error.type == "InsufficientDiskError"
    assert "missing" in result.error.message
    assert not (root / "models").exists() or not any((root / "models").rglob("*"))
    assert result.record.verdict == "FAIL"
    assert result.record.phase("preflight").status == "failed"  # type: ignore[union-attr]
    assert result.record.phase("pull").status == "skipped"  # type: ignore[union-attr]
    with pytest.raises(InsufficientDiskError):
        result.raise_for_failure()


def test_a_profile_model_missing_from_the_manifest_names_the_mirror_command(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store, ["base", "vae"])  # "style" of the image profile is not mirrored
    result = run_warmup(
        store=local_store,
        comfy_root=root,
        catalog=catalog(tmp_path),
        facts=facts(root, 12),
        profile="image",
    )
    assert not result.ok and result.error is not None
    assert "not mirrored" in result.error.message and "style" in result.error.message
    assert "comfyfleet mirror --profile image" in (result.error.hint or "")
    # auto falls back to what is mirrored: minimal.
    auto = run_warmup(
        store=local_store, comfy_root=root, catalog=catalog(tmp_path), facts=facts(root, 12)
    )
    assert auto.ok and auto.profile is not None and auto.profile.name == "minimal"


def test_two_warmups_on_one_root_do_not_collide(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    with RootLock(root):
        result = run_warmup(
            store=local_store, comfy_root=root, catalog=catalog(tmp_path), facts=facts(root, 12)
        )
    assert not result.ok and isinstance(result.exception, LockHeldError)
    assert "is held by pid" in result.error.message  # type: ignore[union-attr]
    assert not (root / "models").exists()


def test_models_outside_the_tree_get_extra_model_paths_and_are_listed(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    outside = tmp_path / "volume" / "models"
    first = run_warmup(
        store=local_store,
        comfy_root=root,
        catalog=catalog(tmp_path),
        facts=facts(root, 12),
        profile="minimal",
        models_dir=outside,
    )
    assert first.ok
    assert (outside / "checkpoints" / "base.safetensors").read_bytes() == content("base")
    yaml_text = (root / "extra_model_paths.yaml").read_text()
    assert str(outside) in yaml_text
    # A ComfyUI started after the yaml was written lists the files from the volume.
    with DiskComfyUI(root) as fake:
        again = run_warmup(
            store=local_store,
            comfy_root=root,
            catalog=catalog(tmp_path),
            facts=facts(root, 12),
            profile="minimal",
            models_dir=outside,
            comfy_url=fake.url,
            boot_timeout_s=10,
        )
    assert again.ok, again.error
    assert again.comfy is not None
    assert "models/checkpoints/base.safetensors" in again.comfy.models_listed


def test_comfyui_that_does_not_list_the_models_fails_with_the_reason(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    with DiskComfyUI(tmp_path / "another-root") as fake:
        result = run_warmup(
            store=local_store,
            comfy_root=root,
            catalog=catalog(tmp_path),
            facts=facts(root, 12),
            profile="minimal",
            comfy_url=fake.url,
            boot_timeout_s=1,
        )
    assert not result.ok and isinstance(result.exception, ComfyError)
    assert "does not list the placed models" in result.error.message  # type: ignore[union-attr]
    assert "models/checkpoints/base.safetensors" in result.error.message  # type: ignore[union-attr]
    assert result.record.phase("comfy_boot").status == "failed"  # type: ignore[union-attr]


def test_no_comfyui_answering_is_a_connection_error(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_warmup(
        store=local_store,
        comfy_root=root,
        catalog=catalog(tmp_path),
        facts=facts(root, 12),
        profile="minimal",
        comfy_url=f"http://127.0.0.1:{port}",
        boot_timeout_s=0.5,
    )
    assert result.error is not None and result.error.type == "ComfyConnectionError"
    assert "did not answer within" in result.error.message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launcher(port: int, *extra: str) -> str:
    return (
        f"PYTHONPATH={REPO} exec {sys.executable} -m tests.support.comfyui_launcher "
        f"--comfy-root . --port {port} {' '.join(extra)}"
    )


def _stop(result: WarmupResult) -> None:
    if result.comfy is not None and result.comfy.pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(result.comfy.pid, signal.SIGTERM)


def test_start_comfy_launches_comfyui_in_its_own_process_group(
    local_store: Any, root: Path, tmp_path: Path, workflow_file: Path
) -> None:
    mirror(local_store)
    port = _free_port()
    result = run_warmup(
        store=local_store,
        comfy_root=root,
        catalog=catalog(tmp_path),
        facts=facts(root, 12),
        profile="minimal",
        start_comfy=_launcher(port, "--boot-delay 0.3"),
        comfy_url=f"http://127.0.0.1:{port}",
        warmup_workflow=workflow_file,
        boot_timeout_s=30,
        prompt_timeout_s=30,
    )
    try:
        assert result.ok, result.error
        assert result.comfy is not None and result.comfy.started and result.comfy.pid
        assert os.getpgid(result.comfy.pid) == result.comfy.pid  # its own process group
        assert result.first_prompt is not None and result.first_prompt["outputs"]
        log = Path(result.comfy.log_path or "").read_text()
        assert "listening on" in log
        assert result.record.phase("comfy_boot").seconds >= 0.3  # type: ignore[union-attr]
    finally:
        _stop(result)


def test_start_comfy_that_exits_fails_fast_with_its_log(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    t0 = time.monotonic()
    result = run_warmup(
        store=local_store,
        comfy_root=root,
        catalog=catalog(tmp_path),
        facts=facts(root, 12),
        profile="minimal",
        start_comfy=_launcher(_free_port(), "--exit-code 3"),
        boot_timeout_s=60,
    )
    assert time.monotonic() - t0 < 20  # not the 60 s boot timeout
    assert not result.ok and result.error is not None
    assert "exited with code 3" in result.error.message
    assert "failing on purpose" in result.error.message  # the log's last lines


def test_a_ui_format_workflow_is_refused_before_pulling(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    bad = tmp_path / "ui.json"
    bad.write_text(json.dumps({"nodes": [], "links": []}))
    result = run_warmup(
        store=local_store,
        comfy_root=root,
        catalog=catalog(tmp_path),
        facts=facts(root, 12),
        warmup_workflow=bad,
    )
    assert isinstance(result.exception, ConfigError)
    assert "API format" in result.error.message  # type: ignore[union-attr]
    assert not (root / "models").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        load_workflow(tmp_path / "missing.json")


def test_bake_then_baked_mode_checks_the_image_files(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    cat = catalog(tmp_path)
    image = tmp_path / "image"
    baked = bake(
        store=local_store,
        catalog=cat,
        profile="image",
        models_dir=image / "models",
        manifest_out=image / "baked-manifest.json",
    )
    assert baked.report.ok and baked.profile.name == "image"
    manifest = read_baked_manifest(image / "baked-manifest.json")
    assert manifest.profile == "image" and len(manifest.entries) == 3
    assert all(e.mtime_ns for e in manifest.entries)

    kwargs: dict[str, Any] = dict(
        store=None,
        comfy_root=root,
        catalog=cat,
        facts=facts(root, 24),
        mode="baked",
        baked_manifest=image / "baked-manifest.json",
    )
    result = run_warmup(**kwargs)
    assert result.ok, result.error
    assert result.record.target_s == 120.0
    assert result.profile is not None and result.profile.name == "image"
    assert {f["verified"] for f in result.files} == {"mtime"}  # no byte read
    assert result.record.phase("pull").status == "skipped"  # type: ignore[union-attr]
    assert (root / "extra_model_paths.yaml").exists()

    # Damage one file (same size, new mtime): re-hashed, caught, never trusted.
    target = image / "models" / "loras" / "style.safetensors"
    target.write_bytes(b"\0" * target.stat().st_size)
    assert [f.status for f in check_baked(manifest).bad] == ["wrong-hash"]
    broken = run_warmup(**kwargs)
    assert not broken.ok and broken.error is not None
    assert broken.error.type == "IntegrityError" and "--store" in (broken.error.hint or "")
    # With the store it repairs the file from the mirror.
    repaired = run_warmup(**{**kwargs, "store": local_store})
    assert repaired.ok, repaired.error
    assert target.read_bytes() == content("style")
    assert any("repairing 1 baked file" in w for w in repaired.warnings)
    # Asking a baked image for another profile is refused.
    other = run_warmup(**{**kwargs, "profile": "video-24gb"})
    assert other.error is not None and "baked with profile image" in other.error.message


def test_a_corrupted_object_in_the_store_is_caught_and_not_placed(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    folder, file, size = MODELS["vae"]
    local_store.put_bytes(f"models/{folder}/{file}", b"\x01" * size)  # same size, other bytes
    result = run_warmup(
        store=local_store,
        comfy_root=root,
        catalog=catalog(tmp_path),
        facts=facts(root, 12),
        profile="minimal",
    )
    assert not result.ok and result.error is not None
    assert result.error.type == "IntegrityError"
    assert "sha256 mismatch" in result.error.message
    assert not placed(root, "vae").exists()
    assert placed(root, "base").read_bytes() == content("base")  # the good file still lands
    assert no_partial_files(root)
    assert result.record.phase("pull").status == "failed"  # type: ignore[union-attr]
    assert {f["key"]: f["status"] for f in result.files}[f"models/{folder}/{file}"] == "failed"


def test_a_stale_wrong_size_file_at_the_target_is_replaced(
    local_store: Any, root: Path, tmp_path: Path
) -> None:
    mirror(local_store)
    stale = placed(root, "base")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"truncated")
    result = run_warmup(
        store=local_store,
        comfy_root=root,
        catalog=catalog(tmp_path),
        facts=facts(root, 12),
        profile="minimal",
    )
    assert result.ok
    assert stale.read_bytes() == content("base")
    assert result.record.files_replaced == 1 and result.record.files_placed == 1


def test_a_disk_refusal_stores_no_timeline(local_store: Any, root: Path, tmp_path: Path) -> None:
    mirror(local_store)
    result = run_warmup(
        store=local_store,
        comfy_root=root,
        catalog=catalog(tmp_path),
        facts=facts(root, 24, free=50_000),
        profile="image",
        history=True,
    )
    assert result.error is not None and result.error.type == "InsufficientDiskError"
    assert result.published is not None and result.published.history_rows == 1
    assert result.published.timeline_key is None
    assert not [o.key for o in local_store.list("reports/") if o.key.endswith(".png")]
