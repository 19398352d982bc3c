"""FakeComfyUI that lists the model files of a ComfyUI root on disk, as ComfyUI does.

``DiskComfyUI(comfy_root)`` answers ``/models/<folder>`` and the model combos of
``/object_info`` from ``<comfy_root>/models/<folder>`` at request time (ComfyUI re-scans a
folder whose mtime changed), with folder_paths.py's rules: the standard folders list only
model extensions, ``diffusion_models`` also scans ``unet/`` and ``text_encoders`` also
``clip/``, folders that custom nodes register list every file, sub-directories appear as
``a/b.safetensors``. ``extra_model_paths.yaml`` in the root is read once, at start, like
ComfyUI does. Everything else is ``tests.doubles.comfyui.FakeComfyUI``.

Run as a process (what ``comfyfleet warmup --start-comfy`` launches in tests)::

    python -m tests.support.comfyui_launcher --comfy-root DIR --port N [--boot-delay S] \
        [--execution-time S]

It serves until SIGTERM/SIGINT; ``--exit-code N`` exits at once with N instead (a ComfyUI
that crashes on start).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from tests.doubles.comfyui import FakeComfyUI

PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
UNFILTERED = {"animatediff_models", "animatediff_motion_lora", "CogVideo", "VHS_video_formats"}
LEGACY_DIRS = {"diffusion_models": ["unet"], "text_encoders": ["clip"]}
YAML_KEYS = {"unet": "diffusion_models", "clip": "text_encoders"}


def _extra_dirs(comfy_root: Path) -> dict[str, list[Path]]:
    """``extra_model_paths.yaml``: folder key -> extra directories (utils/extra_config.py)."""
    path = comfy_root / "extra_model_paths.yaml"
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    extra: dict[str, list[Path]] = {}
    for section in data.values():
        if not isinstance(section, dict):
            continue
        base = Path(os.path.expandvars(os.path.expanduser(str(section.get("base_path", "")))))
        if not base.is_absolute():
            base = comfy_root / base
        for key, value in section.items():
            if key in ("base_path", "is_default"):
                continue
            for line in str(value).splitlines():
                if line.strip():
                    extra.setdefault(YAML_KEYS.get(key, key), []).append(base / line.strip())
    return extra


class DiskComfyUI(FakeComfyUI):
    """FakeComfyUI whose model lists come from a ComfyUI root on disk."""

    def __init__(self, comfy_root: Path, *, port: int = 0) -> None:
        super().__init__(models={}, port=port)
        self.comfy_root = Path(comfy_root)
        self.extra = _extra_dirs(self.comfy_root)

    def _dirs(self, folder: str) -> list[Path]:
        models = self.comfy_root / "models"
        dirs = [models / folder] + [models / d for d in LEGACY_DIRS.get(folder, [])]
        return dirs + self.extra.get(folder, [])

    def _files(self, folder: str) -> list[str]:
        names: set[str] = set()
        for base in self._dirs(folder):
            if not base.is_dir():
                continue
            for dirpath, _, files in os.walk(base, followlinks=True):
                for name in files:
                    full = Path(dirpath) / name
                    if name.endswith((".part", ".journal", ".tmp")):
                        continue
                    if folder not in UNFILTERED and full.suffix.lower() not in PT_EXTENSIONS:
                        continue
                    names.add(full.relative_to(base).as_posix())
        return sorted(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfyui_launcher")
    parser.add_argument("--comfy-root", type=Path, default=Path("."))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--boot-delay", type=float, default=0.0)
    parser.add_argument("--exit-code", type=int)
    parser.add_argument("--execution-time", type=float, default=0.0)  # seconds per prompt
    args = parser.parse_args(argv)
    print(f"comfyui_launcher: root {args.comfy_root.absolute()}", flush=True)
    if args.exit_code is not None:
        print("comfyui_launcher: failing on purpose", flush=True)
        return args.exit_code
    # Stop signals are taken synchronously (sigwait), not by a handler: a handler that
    # sets a threading.Event can deadlock when a second signal lands inside the first.
    # Blocked before the server's threads start, so none of them gets them either.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    time.sleep(args.boot_delay)  # torch + custom nodes take a while in the real one
    fake = DiskComfyUI(args.comfy_root, port=args.port)
    fake.execution_time = args.execution_time
    fake.start()
    print(f"comfyui_launcher: listening on {fake.url}", flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
