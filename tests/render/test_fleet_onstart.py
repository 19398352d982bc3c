"""The fleet on-start script (``render onstart --via fleet``): parsed by bash and
shellcheck, small enough for vast.ai's onstart field, and run for real with the commands
that cannot run here (pip, the venv) stubbed: the wheel install refuses a wrong sha256, the
warm-up runs as a flow on the Prefect test server, ComfyUI (the disk-backed test double)
listens on 127.0.0.1 only and comes back when it dies, the gateway is the only door, and
the ready event carries the endpoint; a failed warm-up sends no ready event."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.cli import main
from comfyfleet.errors import ConfigError
from comfyfleet.render import onstart_steps
from comfyfleet.render.assets import OnstartSettings, render_onstart
from comfyfleet.warmup import events
from tests.render.test_render import BASH, _base_env, bash_n, shellcheck_binary
from tests.warmup.mirrored import mirror, write_catalog

REPO = Path(__file__).resolve().parents[2]
FLEET_VARIANTS = [
    OnstartSettings(via="fleet"),
    OnstartSettings(
        via="fleet",
        profile="video-24gb",
        mode="baked",
        store="s3://bucket/p x",
        comfy_root="/data/Comfy UI",
        warmup_workflow="/data/warm $(id).json",
        catalogs=("/data/l.yaml", "builtin"),
        home="/opt/c f",
        fail_on_target=True,
        gateway_port=9000,
        comfy_port=19000,
    ),
]
# vast.ai's onstart field: 4048 characters by the spec (reference §7). `instances up`
# sends a longer script gzip + base64 packed, full-line comments dropped (rent.pack_onstart).
ONSTART_LIMIT = 4048


def _packed_length(script: str) -> int:
    lean = "\n".join(line for line in script.splitlines() if not line.startswith("#")) + "\n"
    blob = base64.b64encode(gzip.compress(lean.encode(), 9, mtime=0)).decode()
    return len(f'f="$(mktemp)" && echo {blob} | base64 -d | gzip -dc > "$f" && exec bash "$f"')


# ------------------------------------------------------------------ the text


@pytest.mark.parametrize("settings", FLEET_VARIANTS)
def test_fleet_script_parses_and_passes_shellcheck(
    settings: OnstartSettings, tmp_path: Path
) -> None:
    text = render_onstart(settings)
    assert bash_n(text, tmp_path).returncode == 0
    script = tmp_path / "fleet.sh"
    script.write_text(text)
    done = subprocess.run(
        [shellcheck_binary(), "-S", "warning", "-s", "bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _packed_length(text) <= ONSTART_LIMIT


@pytest.mark.parametrize("settings", FLEET_VARIANTS)
def test_comfyui_listens_on_loopback_only_and_comfyfleet_comes_from_the_wheel(
    settings: OnstartSettings,
) -> None:
    text = render_onstart(settings)
    listens = [line for line in text.splitlines() if re.search(r"--listen \S", line)]
    comfy = [re.findall(r"--listen (\S+)", line) for line in listens if " main.py " in line]
    gateway = [re.findall(r"--listen (\S+)", line) for line in listens if '" gateway ' in line]
    assert comfy == [["127.0.0.1"]], listens
    assert gateway == [['"0.0.0.0:$GATEWAY_PORT"']], listens
    assert len(listens) == 2  # nothing else is told where to listen
    assert '--upstream "http://127.0.0.1:$COMFY_PORT"' in text
    # comfyfleet is installed from the verified wheel file only, never by a PyPI name.
    pip_lines = [line for line in text.splitlines() if "pip install" in line]
    assert pip_lines == [
        '  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"'
    ]
    assert "COMFYFLEET_PACKAGE" not in text
    # the warm-up is the flow, run here, never handed to a work pool
    assert '-m flows.warmup "${args[@]}"' in text
    assert "worker start" not in text and "--pool" not in text
    assert f"\nEVENT_READY={events.INSTANCE_READY}\n" in text


def test_fleet_settings_that_cannot_work_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--start-comfy does not go with --via fleet"):
        render_onstart(OnstartSettings(via="fleet", start_comfy="python main.py"))
    with pytest.raises(ConfigError, match="both 9000"):
        render_onstart(OnstartSettings(via="fleet", gateway_port=9000, comfy_port=9000))
    with pytest.raises(ConfigError, match="not a TCP port"):
        render_onstart(OnstartSettings(via="fleet", gateway_port=0))
    assert main(["render", "onstart", "--via", "fleet", "--start-comfy", "x"]) == 2
    assert "does not go with --via fleet" in capsys.readouterr().err
    argv = [
        "render",
        "onstart",
        "--via",
        "fleet",
        "--gateway-port",
        "9001",
        "--comfy-port",
        "19001",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "\nDEFAULT_GATEWAY_PORT=9001\n" in text and "\nDEFAULT_COMFY_PORT=19001\n" in text


# ------------------------------------------------------------------ stubs


def _write_exe(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def _stub_python(tmp_path: Path, *, version_exit: int) -> tuple[Path, Path]:
    """A ``python3`` for the script (COMFYFLEET_PYTHON): the real one, except that ``-m
    venv DIR`` makes a venv whose python records ``-m pip`` calls (one line each, in the
    returned file) and "installs" a ``comfyfleet`` that exits ``version_exit`` (the script
    stops there: the install step is what these tests look at)."""
    pip_calls = tmp_path / "pip-calls.txt"
    real = shlex.quote(sys.executable)
    venv_python = (
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = pip ]; then\n'
        f'  printf "%s\\n" "$*" >>{shlex.quote(str(pip_calls))}\n'
        f'  printf "#!/bin/sh\\nexit {version_exit}\\n" >"$(dirname "$0")/comfyfleet"\n'
        '  chmod +x "$(dirname "$0")/comfyfleet"\n'
        "  exit 0\n"
        "fi\n"
        f'exec {real} "$@"\n'
    )
    template = tmp_path / "venv-python"
    template.write_text(venv_python)
    stub = tmp_path / "python3"
    _write_exe(
        stub,
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = venv ]; then\n'
        f'  mkdir -p "$3/bin" && cp {shlex.quote(str(template))} "$3/bin/python"'
        ' && chmod +x "$3/bin/python"\n'
        "  exit 0\n"
        "fi\n"
        f'exec {real} "$@"\n',
    )
    return stub, pip_calls


class _WheelServer:
    """A file server on 127.0.0.1 that serves ``body`` at any path and counts requests,
    answering ``status`` (403 is what S3 answers an expired presigned URL)."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 200
        self.paths: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.paths.append(self.path)
                self.send_response(server.status)
                data = server.body if server.status == 200 else b"<Error>AccessDenied</Error>"
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        port = self.httpd.server_address[1]
        return f"http://127.0.0.1:{port}/wheels/{name}?X-Amz-Signature=s3cr3tsig&X-Amz-Credential=AKIAX"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def wheel_server() -> Iterator[_WheelServer]:
    server = _WheelServer(b"PK\x03\x04 not really a wheel, pip is stubbed")
    yield server
    server.close()


def _install_env(tmp_path: Path, server: _WheelServer, sha: str) -> tuple[dict[str, str], Path]:
    stub, pip_calls = _stub_python(tmp_path, version_exit=9)
    root = tmp_path / "ComfyUI"
    root.mkdir(exist_ok=True)
    (root / "main.py").write_text("# ComfyUI\n")
    env = {
        **_base_env(tmp_path),
        "COMFYFLEET_HOME": str(tmp_path / "home"),
        "COMFYFLEET_PYTHON": str(stub),
        "COMFYFLEET_STORE": "s3://bucket/p",
        "COMFY_ROOT": str(root),
        "COMFYFLEET_WHEEL_URL": server.url("comfyfleet-0.1.0-py3-none-any.whl"),
        "COMFYFLEET_WHEEL_SHA256": sha,
        "COMFYFLEET_GATEWAY_TOKEN": "gw-token-not-printed",
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
    }
    return env, pip_calls


def _run(
    script: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(script)], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _fleet_script(tmp_path: Path, **settings: Any) -> Path:
    script = tmp_path / "onstart.sh"
    script.write_text(render_onstart(OnstartSettings(via="fleet", **settings)))
    return script


# ------------------------------------------------------------------ the install step


def test_the_wheel_with_the_right_sha256_is_installed_and_reused(
    tmp_path: Path, wheel_server: _WheelServer
) -> None:
    sha = hashlib.sha256(wheel_server.body).hexdigest()
    env, pip_calls = _install_env(tmp_path, wheel_server, sha)
    script = _fleet_script(tmp_path)
    done = _run(script, env)
    # the stub comfyfleet exits 9 at `--version`: the script stopped right after the install
    assert done.returncode == 9, done.stderr
    wheel = tmp_path / "home" / "wheels" / "comfyfleet-0.1.0-py3-none-any.whl"
    assert wheel.read_bytes() == wheel_server.body
    assert pip_calls.read_text().splitlines() == [
        f"-m pip install --quiet --disable-pip-version-check {wheel}"
    ]
    assert (tmp_path / "home" / "venv" / ".comfyfleet-wheel").read_text() == sha
    assert "installing comfyfleet-0.1.0-py3-none-any.whl (sha256 checked)" in done.stderr
    (path,) = wheel_server.paths  # the presigned query went to the server, and only there
    assert path.startswith("/wheels/comfyfleet-0.1.0-py3-none-any.whl?X-Amz-Signature=")
    assert "s3cr3tsig" not in done.stderr + done.stdout and "AKIAX" not in done.stderr
    # A reboot with the same wheel: no download, no pip.
    again = _run(script, env)
    assert again.returncode == 9
    assert len(wheel_server.paths) == 1 and len(pip_calls.read_text().splitlines()) == 1


def test_a_wheel_whose_sha256_does_not_match_is_refused(
    tmp_path: Path, wheel_server: _WheelServer
) -> None:
    env, pip_calls = _install_env(tmp_path, wheel_server, "0" * 64)
    done = _run(_fleet_script(tmp_path), env)
    assert done.returncode == 3, done.stderr
    actual = hashlib.sha256(wheel_server.body).hexdigest()
    assert (
        f"wheel comfyfleet-0.1.0-py3-none-any.whl has sha256 {actual}, expected {'0' * 64}: "
        "refusing to install it" in done.stderr
    )
    assert not pip_calls.exists()  # pip never saw it
    assert not (tmp_path / "home" / "venv").exists()
    assert list((tmp_path / "home" / "wheels").iterdir()) == []  # no file, no .part
    assert "s3cr3tsig" not in done.stderr + done.stdout


def test_a_wheel_url_that_fails_says_so_without_its_query(
    tmp_path: Path, wheel_server: _WheelServer
) -> None:
    wheel_server.status = 403  # an expired presigned URL
    env, pip_calls = _install_env(tmp_path, wheel_server, "0" * 64)
    done = _run(_fleet_script(tmp_path), env)
    assert done.returncode == 2
    port = wheel_server.httpd.server_address[1]
    assert (
        f"cannot download the wheel http://127.0.0.1:{port}/wheels/"
        "comfyfleet-0.1.0-py3-none-any.whl: HTTP 403" in done.stderr
    )
    assert len(wheel_server.paths) == 1  # a 4xx is not retried
    assert "s3cr3tsig" not in done.stderr + done.stdout and "AKIAX" not in done.stderr
    assert not pip_calls.exists()
    # user:password@ in a URL is a credential too (urllib refuses the URL): never shown
    env["COMFYFLEET_WHEEL_URL"] = env["COMFYFLEET_WHEEL_URL"].replace("//", "//u:pw-x@", 1)
    done = _run(_fleet_script(tmp_path), env)
    assert done.returncode == 2 and "cannot download the wheel http://127.0.0.1:" in done.stderr
    assert "pw-x" not in done.stderr + done.stdout and "s3cr3tsig" not in done.stderr


@pytest.mark.parametrize(
    "missing",
    [
        "COMFYFLEET_WHEEL_URL",
        "COMFYFLEET_WHEEL_SHA256",
        "COMFYFLEET_GATEWAY_TOKEN",
        "PREFECT_API_URL",
    ],
)
def test_the_fleet_script_needs_its_environment(
    missing: str, tmp_path: Path, wheel_server: _WheelServer
) -> None:
    env, _ = _install_env(tmp_path, wheel_server, "0" * 64)
    del env[missing]
    done = _run(_fleet_script(tmp_path), env)
    assert done.returncode == 2
    assert f"{missing} is not set" in done.stderr
    assert wheel_server.paths == []


def test_comfy_args_cannot_move_comfyui_off_loopback(
    tmp_path: Path, wheel_server: _WheelServer
) -> None:
    env, _ = _install_env(tmp_path, wheel_server, "0" * 64)
    env["COMFY_ARGS"] = "--highvram --listen 0.0.0.0"
    done = _run(_fleet_script(tmp_path), env)
    assert done.returncode == 2 and "COMFY_ARGS may not hold --listen" in done.stderr
    assert wheel_server.paths == []


# ------------------------------------------------------------------ the whole script


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ComfyUI's main.py for these tests: records how it was started (argv, pid), then serves the
# disk-backed ComfyUI double on the port it was given.
FAKE_MAIN = """\
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
with open("started.jsonl", "a") as f:
    f.write(json.dumps({"argv": argv, "pid": os.getpid()}) + "\\n")
from tests.support.comfyui_launcher import main
sys.exit(main(["--comfy-root", ".", "--port", argv[argv.index("--port") + 1]]))
"""


def _stub_venv(home: Path) -> Path:
    """comfyfleet already "installed" from this wheel (stamp = its sha256): wrappers around
    this checkout's Python and CLI, except that ``python -m prefect ...`` (the script's
    ``event emit``) is recorded instead (one JSON list a line, in the returned file)."""
    bin_dir = home / "venv" / "bin"
    calls = home / "prefect-calls.jsonl"
    record = "import json, sys; print(json.dumps(sys.argv[1:]))"
    _write_exe(
        bin_dir / "python",
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = prefect ]; then\n'
        "  shift 2\n"
        f'  exec "{sys.executable}" -c {shlex.quote(record)} "$@" >>"{calls}"\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n',
    )
    comfyfleet = Path(sys.executable).with_name("comfyfleet")
    _write_exe(bin_dir / "comfyfleet", f'#!/bin/sh\nexec "{comfyfleet}" "$@"\n')
    (home / "venv" / ".comfyfleet-wheel").write_text("ab" * 32)
    return calls


def _fleet_env(tmp_path: Path, store: Any, api_url: str, contract: int) -> dict[str, str]:
    """The instance environment of vast.ai contract ``contract`` (one per test, and one no
    other test uses: the flow runs of the session's Prefect server are looked up by
    instance id)."""
    write_catalog(
        tmp_path / "catalog.yaml", profiles={"minimal": (8, ["base", "vae"])}, ids=["base", "vae"]
    )
    root = tmp_path / "ComfyUI"
    root.mkdir()
    (root / "main.py").write_text(FAKE_MAIN)
    gateway_port = _free_port()
    return {
        **_base_env(tmp_path),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "COMFYFLEET_HOME": str(tmp_path / "home"),
        "COMFYFLEET_STORE": store.uri,
        "COMFY_ROOT": str(root),
        "COMFY_PYTHON": sys.executable,
        "COMFYFLEET_PROFILE": "minimal",
        "COMFYFLEET_WHEEL_URL": "http://127.0.0.1:9/comfyfleet-0.1.0-py3-none-any.whl",
        "COMFYFLEET_WHEEL_SHA256": "ab" * 32,
        "COMFYFLEET_GATEWAY_TOKEN": "gw-token-not-printed",
        "COMFYFLEET_GATEWAY_PORT": str(gateway_port),
        "COMFYFLEET_COMFY_PORT": str(_free_port()),
        "COMFYFLEET_FLEET": "f1",
        "VAST_CONTAINERLABEL": f"C.{contract}",
        "CONTAINER_ID": str(contract),
        "PUBLIC_IPADDR": "127.0.0.1",
        f"VAST_TCP_PORT_{gateway_port}": str(gateway_port),  # a local process: no NAT
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": os.environ["PREFECT_HOME"],
        "DO_NOT_TRACK": "1",
        "AWS_SECRET_ACCESS_KEY": "do-not-print-me",
    }


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def _flow_runs_of(instance_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    return [r for r in runs if r.parameters.get("instance_id") == instance_id]


def _emitted(calls: Path) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for line in calls.read_text().splitlines() if calls.exists() else []:
        argv = json.loads(line)
        opts = dict(zip(argv[3::2], argv[4::2], strict=True))
        out.append((argv[2], json.loads(opts["--resource"]), json.loads(opts["--payload"])))
    return out


def _started(root: Path) -> list[dict[str, Any]]:
    path = root / "started.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_fleet_instance_warms_up_as_a_flow_and_serves_through_the_gateway_only(
    prefect_harness: None, tmp_path: Path, local_store: Any
) -> None:
    pytest.importorskip("comfyfleet.fleet.gateway", reason="comfyfleet gateway (fleet branch)")
    mirror(local_store, ["base", "vae"])
    env = _fleet_env(tmp_path, local_store, _api_url(), 7701)
    script = _fleet_script(tmp_path, catalogs=(str(tmp_path / "catalog.yaml"),))
    home, root = tmp_path / "home", tmp_path / "ComfyUI"
    calls = _stub_venv(home)
    gateway = f"http://127.0.0.1:{env['COMFYFLEET_GATEWAY_PORT']}"
    comfy = f"http://127.0.0.1:{env['COMFYFLEET_COMFY_PORT']}"
    log = (tmp_path / "onstart.log").open("w")
    proc = subprocess.Popen([BASH, str(script)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: (home / "ready.json").exists() or proc.poll() is not None, 180, "ready")
        assert proc.poll() is None, (tmp_path / "onstart.log").read_text()
        ready = json.loads((home / "ready.json").read_text())
        port = env["COMFYFLEET_GATEWAY_PORT"]
        assert ready == {
            "instance_id": "C.7701",
            "contract_id": "7701",
            "endpoint": f"http://127.0.0.1:{port}",
            "host": "127.0.0.1",
            "port": port,
            "fleet": "f1",
            "profile": "minimal",
            "warmup_s": ready["warmup_s"],
        }
        # Events: the warm-up's result, then ready, both about this instance.
        emitted = _emitted(calls)
        assert [name for name, _, _ in emitted] == [events.WARMUP_FINISHED, events.INSTANCE_READY]
        assert {r["prefect.resource.id"] for _, r, _ in emitted} == {"comfyfleet.instance.C.7701"}
        assert emitted[0][2]["ok"] is True and emitted[1][2] == ready
        # The warm-up ran as a flow run on the server, for this instance.
        (run,) = _flow_runs_of("C.7701")
        assert run.state is not None and run.state.is_completed()
        assert run.name == "warmup-C.7701"  # the UI names the instance it warmed
        # ComfyUI on loopback only; the gateway wants the token.
        (first,) = _started(root)
        assert first["argv"][:2] == ["--listen", "127.0.0.1"]
        assert _get(f"{gateway}/system_stats")[0] == 401
        assert _get(f"{gateway}/system_stats", "wrong")[0] == 401
        assert _get(f"{gateway}/system_stats", "gw-token-not-printed")[0] == 200
        assert _get(f"{comfy}/system_stats")[0] == 200  # loopback, from this host only
        # ComfyUI dies: the supervisor starts it again, and the gateway reaches it.
        os.kill(first["pid"], signal.SIGKILL)
        _wait_for(lambda: len(_started(root)) == 2, 30, "a restarted ComfyUI")
        _wait_for(
            lambda: _get(f"{gateway}/system_stats", "gw-token-not-printed")[0] == 200,
            30,
            "ComfyUI behind the gateway again",
        )
        assert "comfyui exited with code -9" in (home / "comfyui.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        log.close()
    out = (tmp_path / "onstart.log").read_text()
    assert "gw-token-not-printed" not in out and "do-not-print-me" not in out
    # Stopping the script stops what it supervises (and so does killing it, test above).
    why = f"the script ended with {proc.returncode}; its log:\n{out}"
    _wait_for(lambda: _closed(comfy), 30, f"ComfyUI stopped ({why})")
    _wait_for(lambda: _closed(gateway), 30, f"gateway stopped ({why})")


def _closed(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return False
    except OSError:
        return True
    return False


def test_a_failed_fleet_warmup_sends_no_ready_event_and_stops_comfyui(
    prefect_harness: None, tmp_path: Path, local_store: Any
) -> None:
    mirror(local_store, ["base"])  # the profile's vae is not in the store: the pull fails
    env = _fleet_env(tmp_path, local_store, _api_url(), 78)
    script = _fleet_script(tmp_path, catalogs=(str(tmp_path / "catalog.yaml"),))
    home, root = tmp_path / "home", tmp_path / "ComfyUI"
    calls = _stub_venv(home)
    (home / "ready.json").write_text("{}")  # an earlier boot's: not this one's
    done = _run(script, env, timeout=180)
    assert done.returncode == 1, done.stderr
    assert "warm-up failed: stopping ComfyUI; no ready event" in done.stderr
    emitted = _emitted(calls)
    assert [name for name, _, _ in emitted] == [events.WARMUP_FINISHED]
    assert emitted[0][2]["ok"] is False and emitted[0][2]["exit_code"] == 1
    assert not (home / "ready.json").exists()
    (run,) = _flow_runs_of("C.78")
    assert run.state is not None and run.state.is_failed()
    assert _closed(f"http://127.0.0.1:{env['COMFYFLEET_COMFY_PORT']}")
    assert _closed(f"http://127.0.0.1:{env['COMFYFLEET_GATEWAY_PORT']}")
    assert not (home / "gateway.log").exists()  # the public door never opened
    assert all(s["argv"][:2] == ["--listen", "127.0.0.1"] for s in _started(root))


# ------------------------------------------------------------------ the steps


def test_ready_payload_and_wait_http() -> None:
    report = {"record": {"profile": "image", "total_s": 41.26}}
    payload = onstart_steps.ready_payload(
        report,
        instance_id="C.5",
        contract_id="5",
        host="203.0.113.7",
        port="41873",
        fleet="f",
        profile="auto",
    )
    assert tuple(payload) == events.READY_PAYLOAD_KEYS
    assert payload["endpoint"] == "http://203.0.113.7:41873"
    assert payload["profile"] == "image" and payload["warmup_s"] == "41.3"
    v6 = onstart_steps.ready_payload(
        {}, instance_id="C.5", contract_id="", host="2001:db8::1", port="1", fleet="", profile="p"
    )
    assert v6["endpoint"] == "http://[2001:db8::1]:1" and v6["profile"] == "p"
    closed = f"http://127.0.0.1:{_free_port()}/healthz"
    with pytest.raises(ValueError, match="did not answer 200 within 0.3 s"):
        onstart_steps.wait_http(closed, 0.3, interval_s=0.05)
    server = _WheelServer(b"ok")
    try:
        onstart_steps.wait_http(server.url("healthz"), 5)
        server.status = 503
        with pytest.raises(ValueError, match=r"\(HTTP 503\)"):
            onstart_steps.wait_http(server.url("healthz"), 0.2, interval_s=0.05)
    finally:
        server.close()


def test_the_wheel_name_comes_from_its_variable_when_given(
    tmp_path: Path, wheel_server: _WheelServer
) -> None:
    """`instances up` also passes COMFYFLEET_WHEEL_NAME: pip needs the wheel's own file
    name, whatever the URL's path looks like."""
    sha = hashlib.sha256(wheel_server.body).hexdigest()
    env, pip_calls = _install_env(tmp_path, wheel_server, sha)
    env["COMFYFLEET_WHEEL_URL"] = wheel_server.url("blob")
    env["COMFYFLEET_WHEEL_NAME"] = "comfyfleet-0.2.0-py3-none-any.whl"
    done = _run(_fleet_script(tmp_path), env)
    assert done.returncode == 9, done.stderr
    wheel = tmp_path / "home" / "wheels" / "comfyfleet-0.2.0-py3-none-any.whl"
    assert pip_calls.read_text().split()[-1] == str(wheel) and wheel.is_file()


def test_supervise_restarts_with_backoff_and_gives_up(tmp_path: Path) -> None:
    from comfyfleet.render.supervise import Backoff, supervise

    runs = tmp_path / "runs"
    command = [BASH, "-c", f'echo run >>"{runs}"; exit 5']
    lines: list[str] = []
    backoff = Backoff(max_restarts=3, first_delay_s=0.05, max_delay_s=0.1, stable_s=30)
    t0 = time.monotonic()
    assert supervise(command, name="comfyui", backoff=backoff, log=lines.append) == 1
    assert len(runs.read_text().splitlines()) == 4  # the first run and 3 restarts
    assert lines[0].startswith("comfyui exited with code 5 after ")
    assert [line.rsplit("; ", 1)[1] for line in lines[:3]] == [
        "restart 1/3 in 0.05 s",
        "restart 2/3 in 0.1 s",
        "restart 3/3 in 0.1 s",  # doubled up to max_delay_s
    ]
    assert lines[3] == "comfyui exited with code 5; 3 restarts did not hold, giving up"
    assert time.monotonic() - t0 >= 0.25
    # A run that lasted stable_s resets the count: never gives up, stopped from outside.
    stop = threading.Event()
    seen: list[str] = []

    def log(line: str) -> None:
        seen.append(line)
        if len(seen) == 6:
            stop.set()

    stable = Backoff(max_restarts=1, first_delay_s=0.01, stable_s=0.0)
    assert supervise(command, name="x", backoff=stable, stop=stop, log=log) == 0
    assert len(seen) == 6 and all(line.endswith("restart 1/1 in 0.01 s") for line in seen)
    assert supervise(["/nonexistent/comfy"], name="x", log=seen.append) == 2
    assert seen[-1] == "x: cannot start /nonexistent/comfy: No such file or directory"


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not reaped yet counts: it runs nothing)."""
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or ") Z " in stat.read_text()


def test_supervise_stops_its_command_on_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    proc = subprocess.Popen(
        [sys.executable, "-m", "comfyfleet.render.supervise", "--name", "sleeper", "--",
         BASH, "-c", f'echo $$ >"{pid_file}"; exec sleep 60'],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    child = int(_wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "pid"))
    # The script sends TERM twice (its trap, then its last kill): the second one's handler
    # may run inside the first's; a lock taken there would hang the supervisor for good.
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert _gone(child)
    done = subprocess.run(
        [sys.executable, "-m", "comfyfleet.render.supervise", "--name", "x"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "no command given" in done.stderr


def test_supervise_stops_its_command_when_its_parent_is_killed(tmp_path: Path) -> None:
    # The on-start script killed with SIGKILL runs no trap: its supervisors notice they
    # were orphaned and stop what they run (else ComfyUI would hold its port forever).
    pid_file, sup_file, err = tmp_path / "pid", tmp_path / "sup", tmp_path / "err"
    inner = f'echo $$ >"{pid_file}"; exec sleep 60'
    parent = subprocess.Popen(
        [BASH, "-c", f'"$0" -m comfyfleet.render.supervise --name sleeper -- {BASH} -c '
         f'{shlex.quote(inner)} 2>"{err}" & echo $! >"{sup_file}"; wait', sys.executable]
    )  # fmt: skip
    child = int(_wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, "pid"))
    supervisor = int(sup_file.read_text())
    parent.kill()
    parent.wait(15)
    _wait_for(lambda: _gone(child) and _gone(supervisor), 15, "the orphaned supervisor to stop")
    assert "is gone; stopping" in err.read_text()
