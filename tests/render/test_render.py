"""Start-up assets: the on-start script (parsed by bash, and run against a local store) and
the Dockerfile (stages, pins, secret mounts, every RUN parsed by sh)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.cli import main
from comfyfleet.errors import ConfigError
from comfyfleet.render.assets import (
    BAKED_MANIFEST_PATH,
    CUSTOM_NODES,
    EVENT_FINISHED,
    EVENT_STARTED,
    SECRET_ID,
    DockerfileSettings,
    OnstartSettings,
    render_dockerfile,
    render_onstart,
)
from tests.warmup.mirrored import mirror, write_catalog

BASH = shutil.which("bash") or "/bin/bash"
SH = shutil.which("dash") or shutil.which("sh") or "/bin/sh"
SECRET_WORDS = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


def bash_n(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.sh"
    script.write_text(text)
    return subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "settings",
    [
        OnstartSettings(),
        OnstartSettings(profile="video-24gb", mode="baked", verify="full", via="worker"),
        OnstartSettings(via="flow"),
        OnstartSettings(
            store="s3://bucket/prefix",
            package="comfyfleet==0.1.0",
            comfy_root="/data/Comfy UI",
            start_comfy="cd '/data/Comfy UI' && python main.py --port 8188 \"$EXTRA\"",
            warmup_workflow="/data/warm up.json",
            catalogs=("/data/loras.yaml", "builtin"),
            fail_on_target=True,
        ),
    ],
)
def test_onstart_script_parses_under_bash_n(settings: OnstartSettings, tmp_path: Path) -> None:
    text = render_onstart(settings)
    done = bash_n(text, tmp_path)
    assert done.returncode == 0, done.stderr
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert "set -x" not in text
    # Secrets are read by boto3 from the environment; the script never names their values.
    assert "AWS_SECRET_ACCESS_KEY=" not in text and "echo $AWS" not in text
    assert "flock -n 9" in text


def test_onstart_refuses_bad_settings() -> None:
    with pytest.raises(ConfigError):
        render_onstart(OnstartSettings(profile="x; rm -rf /"))
    with pytest.raises(ConfigError):
        render_onstart(OnstartSettings(mode="docker"))
    with pytest.raises(ConfigError):
        render_onstart(OnstartSettings(via="ssh"))


def test_render_onstart_cli_refuses_credentials_in_the_store_uri(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["render", "onstart", "--store", "s3://AKIA:secret@bucket/p"]) == 2
    err = capsys.readouterr().err
    assert "carries credentials" in err and "secret" not in err.replace("credentials", "")


def test_render_onstart_cli_refuses_an_s3_uri_without_bucket(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["render", "onstart", "--store", "s3://"]) == 2
    assert "names no bucket" in capsys.readouterr().err


def test_render_onstart_writes_an_executable_file(tmp_path: Path) -> None:
    out = tmp_path / "onstart.sh"
    assert main(["render", "onstart", "--profile", "image", "--output", str(out)]) == 0
    assert os.access(out, os.X_OK)
    assert 'COMFYFLEET_PROFILE="${COMFYFLEET_PROFILE:-image}"' in out.read_text()


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_render_output_that_cannot_be_written_is_one_line(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path if where == "folder" else tmp_path / "notes.txt" / "onstart.sh"
    assert main(["render", "onstart", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {out}: ") and "Traceback" not in err
    assert "hint: pass --output a file path" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no temp file left


def _stub_venv(home: Path) -> None:
    """Pretend comfyfleet is installed in the script's venv: wrappers around this one."""
    bin_dir = home / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, target in (
        ("python", sys.executable),
        ("comfyfleet", str(Path(sys.executable).with_name("comfyfleet"))),
    ):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    (home / "venv" / ".comfyfleet-package").write_text("comfyfleet")


def _run_onstart(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(script)], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_onstart_script_runs_the_warmup_and_reports(tmp_path: Path, local_store: Any) -> None:
    """The rendered script, run for real: finds the root, reuses the venv, warms up from the
    store, keeps the JSON report, prints one line, passes the exit code on, and is safe to
    run again. ComfyUI's start command fails on purpose (a fast, real failure path)."""
    mirror(local_store, ["base", "vae"])
    catalog = write_catalog(
        tmp_path / "catalog.yaml", profiles={"minimal": (8, ["base", "vae"])}, ids=["base", "vae"]
    )
    root = tmp_path / "ComfyUI"
    root.mkdir()
    (root / "main.py").write_text("# ComfyUI\n")
    home = tmp_path / "home"
    _stub_venv(home)
    script = tmp_path / "onstart.sh"
    script.write_text(render_onstart(OnstartSettings(catalogs=(str(catalog),))))
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "COMFYFLEET_HOME": str(home),
        "COMFYFLEET_STORE": local_store.uri,
        "COMFY_ROOT": str(root),
        "START_COMFY": "echo starting; exit 7",
        "COMFYFLEET_PROFILE": "minimal",
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(tmp_path / "prefect")),
        "DO_NOT_TRACK": "1",
        "AWS_SECRET_ACCESS_KEY": "do-not-print-me",
        "VAST_CONTAINERLABEL": "C.4242",
    }
    done = _run_onstart(script, env)
    assert done.returncode == 1, done.stderr
    report = json.loads((home / "warmup-report.json").read_text())
    assert report["ok"] is False
    assert report["record"]["instance_id"] == "C.4242"
    assert (
        report["error"]["type"] == "ComfyError"
        and "exited with code 7" in report["error"]["message"]
    )
    assert {f["status"] for f in report["files"]} == {"placed"}
    assert (root / "models" / "checkpoints" / "base.safetensors").exists()
    summary = [line for line in done.stderr.splitlines() if "warm-up FAIL" in line]
    assert len(summary) == 1 and "profile minimal" in summary[0] and "exit 1" in summary[0]
    assert "do-not-print-me" not in done.stdout + done.stderr
    assert "do-not-print-me" not in (home / "warmup.log").read_text()
    assert (home / "warmup-timeline.png").read_bytes().startswith(b"\x89PNG")

    # A reboot runs it again: the files are there, nothing is fetched.
    again = _run_onstart(script, env)
    assert again.returncode == 1
    report = json.loads((home / "warmup-report.json").read_text())
    assert {f["status"] for f in report["files"]} == {"present"}
    assert report["record"]["bytes_downloaded"] == 0

    # While another run holds the lock, a second one leaves it alone.
    with open(home / "onstart.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = _run_onstart(script, env)
    assert busy.returncode == 0
    assert "another on-start run" in busy.stderr


def test_onstart_without_a_store_says_what_to_set(tmp_path: Path) -> None:
    script = tmp_path / "onstart.sh"
    script.write_text(render_onstart())
    env = {"PATH": os.environ["PATH"], "COMFYFLEET_HOME": str(tmp_path / "home")}
    done = _run_onstart(script, env)
    assert done.returncode == 2
    assert "COMFYFLEET_STORE is not set" in done.stderr


# ---------------------------------------------------------------------------- Dockerfile


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "dangling continuation"
    return out


def test_dockerfile_stages_pins_and_secrets(tmp_path: Path) -> None:
    text = render_dockerfile(DockerfileSettings(profile="video-24gb", catalogs=("loras.yaml",)))
    assert text.startswith("# syntax=docker/dockerfile:1\n")
    instructions = parse_dockerfile(text)
    froms = [args for word, args in instructions if word == "FROM"]
    assert froms == ["${BUILD_PYTHON_IMAGE} AS models", "${BASE_IMAGE} AS nodes", "${BASE_IMAGE}"]
    args = [a for w, a in instructions if w == "ARG"]
    assert any(a.startswith("BASE_IMAGE=vastai/comfy:") for a in args)
    # No secret ever travels as ARG or ENV (they would be in the image history).
    for word, rest in instructions:
        if word in ("ARG", "ENV"):
            assert not SECRET_WORDS.search(rest), rest
    # The store settings come in as a BuildKit secret mount, for the bake step only.
    runs = [a for w, a in instructions if w == "RUN"]
    secret_runs = [r for r in runs if "--mount=type=secret" in r]
    assert len(secret_runs) == 1
    assert f"--mount=type=secret,id={SECRET_ID},required=true" in secret_runs[0]
    assert "comfyfleet bake --profile video-24gb" in secret_runs[0]
    assert "--catalog /opt/comfyfleet/catalog/00-loras.yaml" in secret_runs[0]
    assert ("COPY", "loras.yaml /opt/comfyfleet/catalog/00-loras.yaml") in instructions
    # Every custom node, fetched at its 40-hex commit and checked against it.
    fetch = next(r for r in runs if "fetch_node" in r)
    assert len(CUSTOM_NODES) == 4
    names = {n.name for n in CUSTOM_NODES}
    assert names == {
        "ComfyUI-VideoHelperSuite",
        "ComfyUI-AnimateDiff-Evolved",
        "ComfyUI-CogVideoXWrapper",
        "ComfyUI-HunyuanVideoWrapper",
    }
    for node in CUSTOM_NODES:
        assert re.fullmatch(r"[0-9a-f]{40}", node.commit)
        assert f"fetch_node {node.name} {node.repo} {node.commit}" in fetch
    assert 'rev-parse HEAD)" = "$3"' in fetch
    # The final stage: nodes, models and the baked manifest that --mode baked checks.
    copies = [a for w, a in instructions if w == "COPY"]
    assert "--from=nodes /nodes/ ${COMFY_ROOT}/custom_nodes/" in copies
    assert f"--from=models {BAKED_MANIFEST_PATH} {BAKED_MANIFEST_PATH}" in copies
    assert any("--mode baked" in r for r in runs)
    envs = [a for w, a in instructions if w == "ENV"]
    assert any(f"COMFYFLEET_BAKED_MANIFEST={BAKED_MANIFEST_PATH}" in e for e in envs)
    # Each RUN body is valid POSIX shell (what /bin/sh -c gets).
    for run in runs:
        body = re.sub(r"--mount=\S+\s+", "", run)
        done = subprocess.run([SH, "-n", "-c", body], capture_output=True, text=True, check=False)
        assert done.returncode == 0, (body, done.stderr)


def test_dockerfile_refuses_auto_and_unpinned_nodes() -> None:
    with pytest.raises(ConfigError, match="concrete profile"):
        render_dockerfile(DockerfileSettings(profile="auto"))
    from comfyfleet.render.assets import CustomNode

    loose = (CustomNode("X", "https://github.com/x/x", "main", "x"),)
    with pytest.raises(ConfigError, match="40-hex"):
        render_dockerfile(DockerfileSettings(profile="image", nodes=loose))


def test_render_dockerfile_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "Dockerfile"
    assert main(["render", "dockerfile", "--profile", "image", "--output", str(out)]) == 0
    assert "comfyfleet bake --profile image" in out.read_text()
    assert main(["render", "dockerfile", "--profile", "imagez"]) == 2
    assert "unknown profile" in capsys.readouterr().err
    absolute = write_catalog(tmp_path / "mine.yaml")
    assert main(["render", "dockerfile", "--profile", "image", "--catalog", str(absolute)]) == 2
    assert "build context" in capsys.readouterr().err


def test_events_are_named_for_the_deployment_trigger() -> None:
    text = render_onstart(OnstartSettings(via="worker"))
    assert f"emit_event {EVENT_STARTED}" in text
    assert f"emit_event {EVENT_FINISHED}" in text
