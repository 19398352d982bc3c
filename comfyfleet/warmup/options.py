"""Every warm-up option, spelled once: its name, type, default, check and command-line flag.

``WarmupOptions`` is what ``warm_up`` runs on. The two faces build it the same way:

- ``comfyfleet warmup`` (and ``python -m flows.warmup``) add the flags generated here with
  :func:`add_arguments` and build the options with :func:`from_namespace`;
- the ``warmup`` flow builds them from its parameters with :meth:`WarmupOptions.build`.

Both go through :meth:`WarmupOptions.build`, which treats ``None`` and ``""`` as "not given"
(argparse leaves ``None``, a deployment's event trigger sends ``""`` for a missing key), so
the defaults below are the only ones. ``__post_init__`` checks every value, so a flow
parameter gets the same refusal (``ConfigError``) as a command-line flag.

Each field's ``metadata["cli"]`` is a :class:`Flag`: the flag, its metavar and help. Options
without one (``timeline_presign_s``) are flow-only.
"""

from __future__ import annotations

import argparse
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from comfyfleet.catalog import AUTO_PROFILE
from comfyfleet.config import env
from comfyfleet.errors import ConfigError
from comfyfleet.pull.transfer import WRITE_PATHS, PullSettings
from comfyfleet.units import number_problem, parse_number
from comfyfleet.warmup.timing import MODES

VERIFY_MODES = ("fast", "full")
GPU_CHOICES = ("none",)


@dataclass(frozen=True)
class Flag:
    """How an option appears on the command line.

    ``minimum``/``inclusive`` bound numbers (every number must also be finite);
    ``negate`` names a ``--no-...`` flag for a boolean that defaults to ``True``.
    """

    flag: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    inclusive: bool = True
    required: bool = False
    negate: bool = False


def _cli(flag: str, help: str, **kw: Any) -> dict[str, Flag]:
    return {"cli": Flag(flag, help, **kw)}


def default_mode() -> str:
    """``$COMFYFLEET_MODE``, else ``script`` (read when the options are built)."""
    return env("COMFYFLEET_MODE") or "script"


@dataclass(frozen=True)
class WarmupOptions:
    """What one warm-up does (see the module docstring); every field has its flag's help."""

    comfy_root: Path = field(
        metadata=_cli(
            "--comfy-root",
            "the ComfyUI checkout (models go to DIR/models/<folder>/)",
            metavar="DIR",
            required=True,
        )
    )
    profile: str = field(
        default=AUTO_PROFILE,
        metadata=_cli(
            "--profile",
            "profile to pull (default auto: the largest that fits VRAM and disk)",
            metavar="NAME|auto",
        ),
    )
    vram_gb: float | None = field(
        default=None,
        metadata=_cli("--vram-gb", "use N GB as the GPU's VRAM", metavar="N", minimum=0),
    )
    gpu: str | None = field(
        default=None,
        metadata=_cli("--gpu", "no GPU (laptop, CI): skip nvidia-smi", choices=GPU_CHOICES),
    )
    force: bool = field(
        default=False,
        metadata=_cli(
            "--force", "pull a named profile even when its VRAM floor is above this GPU's"
        ),
    )
    mode: str = field(
        default_factory=default_mode,
        metadata=_cli(
            "--mode",
            "script (target 300 s) or baked (image built by `render dockerfile`, "
            "target 120 s); default $COMFYFLEET_MODE or script",
            choices=MODES,
        ),
    )
    verify: str = field(
        default="fast",
        metadata=_cli(
            "--verify",
            "fast: trust markers of verified files; full: re-hash every file",
            choices=VERIFY_MODES,
        ),
    )
    comfy_url: str | None = field(
        default=None,
        metadata=_cli(
            "--comfy-url",
            "wait for ComfyUI here (default with --start-comfy: the --listen/--port of "
            "that command, else http://127.0.0.1:8188)",
            metavar="URL",
        ),
    )
    start_comfy: str | None = field(
        default=None,
        metadata=_cli(
            "--start-comfy",
            "shell command that starts ComfyUI (run in --comfy-root, own process group, "
            "Hugging Face offline, log in DIR/.comfyfleet/comfyui.log)",
            metavar="CMD",
        ),
    )
    warmup_workflow: Path | None = field(
        default=None,
        metadata=_cli(
            "--warmup-workflow",
            "API-format workflow to run once ComfyUI is up (loads the models)",
            metavar="FILE",
        ),
    )
    models_dir: Path | None = field(
        default=None,
        metadata=_cli(
            "--models-dir",
            "place models here instead of DIR/models (writes extra_model_paths.yaml)",
            metavar="DIR",
        ),
    )
    baked_manifest: Path | None = field(
        default=None,
        metadata=_cli(
            "--baked-manifest",
            "baked manifest for --mode baked (default $COMFYFLEET_BAKED_MANIFEST or "
            "/opt/comfyfleet/baked-manifest.json)",
            metavar="PATH",
        ),
    )
    timeline: Path | None = field(
        default=None,
        metadata=_cli("--timeline", "also write the timeline here", metavar="PNG"),
    )
    fail_on_target: bool = field(
        default=False,
        metadata=_cli("--fail-on-target", "exit 3 when the cold start misses its target"),
    )
    target_s: float | None = field(
        default=None,
        metadata=_cli(
            "--target-s", "override the target seconds", metavar="S", minimum=0, inclusive=False
        ),
    )
    instance_id: str = field(
        default="",
        metadata=_cli(
            "--instance-id", "name of this instance in the report (default: none)", metavar="ID"
        ),
    )
    boot_timeout_s: float = field(
        default=600.0,
        metadata=_cli(
            "--boot-timeout",
            "how long ComfyUI may take to come up (default 600)",
            metavar="S",
            minimum=0,
            inclusive=False,
        ),
    )
    prompt_timeout_s: float = field(
        default=1800.0,
        metadata=_cli(
            "--prompt-timeout",
            "how long the first prompt may take (default 1800)",
            metavar="S",
            minimum=0,
            inclusive=False,
        ),
    )
    wait_lock_s: float = field(
        default=0.0,
        metadata=_cli(
            "--wait-lock",
            "wait up to S seconds for another warm-up on this root to finish",
            metavar="S",
            minimum=0,
        ),
    )
    history: bool = field(
        default=True,
        metadata=_cli(
            "--no-history",
            "do not append to the store's cold-start history nor store the timeline",
            negate=True,
        ),
    )
    write_path: str = field(
        default="write-behind",
        metadata=_cli(
            "--write-path",
            "how pulled files are written: write-behind (default: buffered, writeback "
            "started per range, the files stay cached for ComfyUI's read), buffered, or "
            "direct (O_DIRECT: least client CPU, but ComfyUI then reads from disk)",
            choices=tuple(WRITE_PATHS),
        ),
    )
    fast_http: bool = field(
        default=True,
        metadata=_cli(
            "--no-fast-http",
            "read ranges with boto3 instead of presigned URLs",
            negate=True,
        ),
    )
    # Flow only: the timeline artifact as an image through a presigned URL valid this long.
    timeline_presign_s: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _PATHS and isinstance(value, str):
                object.__setattr__(self, f.name, Path(value))
            spec: Flag | None = f.metadata.get("cli")
            label = spec.flag if spec else f.name
            choices = spec.choices if spec is not None else None
            if choices and value is not None and value not in choices:
                raise ConfigError(
                    f"{label} {value!r} is not one of {', '.join(choices)}",
                    hint=f"pass {label} {' or '.join(choices)}",
                )
            if isinstance(value, int | float) and not isinstance(value, bool):
                minimum = spec.minimum if spec else 1
                inclusive = spec.inclusive if spec else True
                check_number(label, value, minimum=minimum, inclusive=inclusive)
        if self.start_comfy is not None and not self.start_comfy.strip():
            raise ConfigError("--start-comfy is empty", hint="pass the command that starts ComfyUI")

    @classmethod
    def build(cls, values: Mapping[str, Any]) -> WarmupOptions:
        """Options from ``values`` (flow parameters, argparse's namespace): ``None`` and
        ``""`` mean "not given" and take the default; unknown names are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown warm-up option(s): {', '.join(unknown)}")
        given = {k: v for k, v in values.items() if v is not None and v != ""}
        if "comfy_root" not in given:
            raise ConfigError(
                "a warm-up needs the ComfyUI root",
                hint="pass --comfy-root DIR (flow parameter comfy_root)",
            )
        return cls(**given)

    def pull_settings(self) -> PullSettings:
        """The pull's settings, built here only: every pull option reaches the pull."""
        verify: typing.Literal["fast", "full"] = "full" if self.verify == "full" else "fast"
        return PullSettings(verify=verify, fast_http=self.fast_http, **WRITE_PATHS[self.write_path])


_PATHS = frozenset({"comfy_root", "warmup_workflow", "models_dir", "baked_manifest", "timeline"})


def defaults() -> dict[str, Any]:
    """Each option's default (``comfy_root`` has none; ``mode`` is read from the environment)."""
    out: dict[str, Any] = {}
    for f in fields(WarmupOptions):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
    return out


# ---------------------------------------------------------------- numbers


def check_number(label: str, value: float, *, minimum: float | None, inclusive: bool) -> None:
    """Refuse ``nan``/``inf`` and values below ``minimum`` (``ConfigError``)."""
    problem = number_problem(value, minimum=minimum, inclusive=inclusive)
    if problem is not None:
        hint = "pass a number" if not math.isfinite(value) else None
        raise ConfigError(f"{label} {problem}", hint=hint)


def _number_type(kind: type[int] | type[float], spec: Flag) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            return parse_number(text, kind, minimum=spec.minimum, inclusive=spec.inclusive)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


# ---------------------------------------------------------------- argparse


def _base_type(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option that has a :class:`Flag` (argparse defaults stay ``None``, so
    :meth:`WarmupOptions.build` applies the defaults above)."""
    hints = typing.get_type_hints(WarmupOptions)
    for f in fields(WarmupOptions):
        spec: Flag | None = f.metadata.get("cli")
        if spec is None:
            continue
        kind = _base_type(hints[f.name])
        kw: dict[str, Any] = {"dest": f.name, "help": spec.help}
        if kind is bool:
            kw["action"] = "store_false" if spec.negate else "store_true"
            kw["default"] = None
        else:
            kw["metavar"] = spec.metavar
            if spec.choices:
                kw["choices"] = spec.choices
            if kind in (int, float):
                kw["type"] = _number_type(kind, spec)
            elif kind is Path:
                kw["type"] = Path
            if spec.required:
                kw["required"] = True
        parser.add_argument(spec.flag, **kw)


def from_namespace(args: argparse.Namespace) -> WarmupOptions:
    """The options of a namespace parsed with :func:`add_arguments` (other names ignored)."""
    names = {f.name for f in fields(WarmupOptions)}
    return WarmupOptions.build({k: v for k, v in vars(args).items() if k in names})
