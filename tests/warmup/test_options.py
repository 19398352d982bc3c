"""One ``WarmupOptions`` for both faces: flags generated from it, the flow's parameters
checked against it, pull settings built from it, one retry owner per run."""

from __future__ import annotations

import argparse
import ast
import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from comfyfleet.errors import ConfigError, SourceUnavailable, StoreAuthError
from comfyfleet.pull import transfer
from comfyfleet.warmup import driver
from comfyfleet.warmup.driver import PHASE_RETRY_DELAYS_S, run_with_retries
from comfyfleet.warmup.options import WarmupOptions, add_arguments, defaults, from_namespace

REPO = Path(__file__).resolve().parents[2]


def parse(*argv: str) -> WarmupOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_namespace(parser.parse_args(["--comfy-root", "/r", *argv]))


def test_flags_default_to_the_options_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFYFLEET_MODE", raising=False)
    assert parse() == WarmupOptions(comfy_root=Path("/r"))
    monkeypatch.setenv("COMFYFLEET_MODE", "baked")
    assert parse().mode == "baked"
    assert parse("--mode", "script").mode == "script"


def test_every_option_has_a_flag_that_sets_it() -> None:
    opts = parse(
        "--profile", "image", "--vram-gb", "24", "--gpu", "none", "--force",
        "--verify", "full", "--comfy-url", "http://h:1", "--start-comfy", "python main.py",
        "--warmup-workflow", "w.json", "--models-dir", "/m", "--baked-manifest", "b.json",
        "--timeline", "t.png", "--fail-on-target", "--target-s", "99", "--instance-id", "C.1",
        "--boot-timeout", "5", "--prompt-timeout", "6", "--wait-lock", "7", "--no-history",
        "--write-path", "direct", "--no-fast-http",
    )  # fmt: skip
    changed = {f.name for f in fields(opts) if getattr(opts, f.name) != defaults().get(f.name)}
    flow_only = {"timeline_presign_s"}
    assert changed == {f.name for f in fields(opts)} - flow_only - {"mode"}
    assert opts.models_dir == Path("/m") and opts.boot_timeout_s == 5.0 and not opts.history


def test_flow_parameters_are_the_options_with_the_same_defaults() -> None:
    from flows.warmup import INPUT_PARAMETERS, warmup

    params = inspect.signature(warmup.fn).parameters
    option_names = {f.name for f in fields(WarmupOptions)}
    assert set(params) - set(INPUT_PARAMETERS) == option_names
    for name, default in defaults().items():
        # mode is read from $COMFYFLEET_MODE when the options are built; paths come as str.
        if name == "mode" or isinstance(default, Path | type(None)):
            assert params[name].default is None
        else:
            assert params[name].default == default, name


def test_the_flow_module_does_not_borrow_the_cli() -> None:
    tree = ast.parse((REPO / "flows" / "warmup.py").read_text())
    imported = {
        node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert not any(m == "comfyfleet.cli" or m.startswith("comfyfleet.cli.") for m in imported)


def test_build_treats_empty_and_none_as_not_given_and_refuses_unknown_names() -> None:
    opts = WarmupOptions.build({"comfy_root": "/r", "profile": "", "comfy_url": None})
    assert opts.profile == "auto" and opts.comfy_url is None and opts.comfy_root == Path("/r")
    with pytest.raises(ConfigError, match="unknown warm-up option"):
        WarmupOptions.build({"comfy_root": "/r", "profcile": "image"})
    with pytest.raises(ConfigError, match="needs the ComfyUI root"):
        WarmupOptions.build({"comfy_root": "", "profile": "image"})  # an event without it


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"verify": "slow"}, "--verify 'slow' is not one of fast, full"),
        ({"mode": "docker"}, "--mode 'docker' is not one of script, baked"),
        ({"start_comfy": "  "}, "--start-comfy is empty"),
        ({"boot_timeout_s": 0}, "--boot-timeout must be > 0"),
        ({"target_s": float("nan")}, "--target-s must be a finite number"),
        ({"wait_lock_s": float("inf")}, "--wait-lock must be a finite number"),
        ({"vram_gb": -1}, "--vram-gb must be >= 0"),
        ({"timeline_presign_s": 0}, "timeline_presign_s must be >= 1"),
    ],
)
def test_values_a_flow_passes_get_the_flags_refusals(values: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        WarmupOptions.build({"comfy_root": "/r", **values})


def test_pull_settings_carry_every_pull_option() -> None:
    settings = WarmupOptions(
        comfy_root=Path("/r"), verify="full", write_path="direct", fast_http=False
    ).pull_settings()
    assert (settings.verify, settings.write_path, settings.fast_http) == ("full", "direct", False)
    for name, fields_set in transfer.WRITE_PATHS.items():
        settings = WarmupOptions(comfy_root=Path("/r"), write_path=name).pull_settings()
        assert settings.write_path == name
        assert {k: getattr(settings, k) for k in fields_set} == fields_set


def test_the_default_write_path_is_write_behind() -> None:
    # Chosen by measurement (bench/warmup.py (g) vs (g')): see PullSettings' docstring.
    assert transfer.PullSettings().write_path == "write-behind"
    assert WarmupOptions(comfy_root=Path("/r")).pull_settings().write_path == "write-behind"


def test_write_path_and_fast_http_reach_the_pull(
    tmp_path: Path, local_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from comfyfleet.cli import main

    from .mirrored import mirrored_root

    seen: list[transfer.PullSettings] = []
    real_pull = transfer.pull

    def recording_pull(*args: Any, **kwargs: Any) -> transfer.PullReport:
        seen.append(kwargs["settings"])
        return real_pull(*args, **kwargs)

    monkeypatch.setattr(driver, "pull", recording_pull)
    _, args = mirrored_root(tmp_path, local_store)
    argv = ["warmup", *args, "--gpu", "none", "--no-history", "--json"]
    assert main([*argv, "--verify", "full", "--write-path", "direct", "--no-fast-http"]) == 0
    assert (seen[-1].verify, seen[-1].write_path, seen[-1].fast_http) == ("full", "direct", False)
    assert main(argv) == 0
    last = seen[-1]
    assert (last.verify, last.write_path, last.fast_http) == ("fast", "write-behind", True)


def test_the_driver_retries_only_transient_pull_failures() -> None:
    sleeps: list[float] = []
    calls = 0

    def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise SourceUnavailable("store 503")

    run_with_retries("pull", flaky, sleep=sleeps.append)
    assert calls == 3 and sleeps == list(PHASE_RETRY_DELAYS_S["pull"][:2])

    calls = 0

    def always() -> None:
        nonlocal calls
        calls += 1
        raise SourceUnavailable("store 503")

    with pytest.raises(SourceUnavailable):
        run_with_retries("pull", always, sleep=sleeps.append)
    assert calls == len(PHASE_RETRY_DELAYS_S["pull"]) + 1

    def denied() -> None:
        raise StoreAuthError("store answered 403")

    sleeps.clear()
    with pytest.raises(StoreAuthError):
        run_with_retries("pull", denied, sleep=sleeps.append)
    assert sleeps == []
    calls = 0
    with pytest.raises(SourceUnavailable):
        run_with_retries("comfy_boot", always, sleep=sleeps.append)
    assert calls == 1  # a boot already polled for its whole timeout
