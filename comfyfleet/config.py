"""Every environment variable comfyfleet reads, in one table, read at call time.

Nothing else in the package touches ``os.environ``: a module asks :func:`env` (or one of the
typed helpers) by name, so a test's ``monkeypatch.setenv`` takes effect at once and the table
below is the whole story. A name that is not in the table is a programming error
(``KeyError``), so a new variable cannot slip in undocumented.

Empty values count as unset everywhere: ``FOO=`` in an env file is "not configured", not
"configured as empty". Values are stripped of surrounding whitespace.

Variables that belong to other tools (``AWS_*`` for boto3, ``PREFECT_*`` for Prefect,
``HF_*`` for huggingface_hub) are listed when comfyfleet itself reads them too; the library
that owns them keeps reading them its own way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EnvVar:
    """One variable: its name, older names still honoured (first set wins), what it does."""

    name: str
    doc: str
    aliases: tuple[str, ...] = ()
    secret: bool = False


_VARS: tuple[EnvVar, ...] = (
    # store
    EnvVar("COMFYFLEET_STORE", "store URI used when --store/--store-block are not given"),
    EnvVar("COMFYFLEET_HOME", "comfyfleet's home (default ~/.comfyfleet); the default store"),
    EnvVar("AWS_ENDPOINT_URL_S3", "S3 endpoint for s3:// sources and stores (R2, B2, MinIO...)"),
    EnvVar("AWS_ENDPOINT_URL", "S3 endpoint when AWS_ENDPOINT_URL_S3 is unset"),
    EnvVar("AWS_CA_BUNDLE", "CA bundle for the pull's presigned range reads (as botocore)"),
    # sources
    EnvVar(
        "HF_TOKEN", "Hugging Face token (gated repos)", ("HUGGING_FACE_HUB_TOKEN",), secret=True
    ),
    EnvVar("HF_ENDPOINT", "Hugging Face endpoint (a mirror hub, or the local test hub)"),
    EnvVar("CIVITAI_TOKEN", "CivitAI API token", ("CIVITAI_API_TOKEN",), secret=True),
    EnvVar("CIVITAI_BASE_URL", "CivitAI API base URL"),
    # fal.ai
    EnvVar("FAL_KEY", "fal.ai API key (video stages off the instance)", secret=True),
    EnvVar("FAL_QUEUE_URL", "fal.ai queue API base URL"),
    EnvVar(
        "COMFYFLEET_COMFY_TOKEN",
        "bearer token for ComfyUIs behind a gateway (generate --comfy-token-env)",
        secret=True,
    ),
    # warm-up
    EnvVar("COMFYFLEET_MODE", "warm-up mode when --mode is not given: script or baked"),
    EnvVar("COMFYFLEET_BAKED_MANIFEST", "the baked image's manifest (--mode baked)"),
    # fleet (vast.ai)
    EnvVar("VAST_API_KEY", "vast.ai API key (comfyfleet instances, fleet-reaper)", secret=True),
    EnvVar("VAST_URL", "vast.ai server (default https://console.vast.ai), as the vastai CLI"),
    EnvVar(
        "COMFYFLEET_GATEWAY_TOKEN",
        "bearer token of `comfyfleet gateway`, the authenticated door to an instance's ComfyUI",
        secret=True,
    ),
    EnvVar(
        "COMFYFLEET_GATEWAY_LISTEN",
        "on an instance: HOST:PORT its gateway listens on (set by `instances up`)",
    ),
    EnvVar(
        "COMFYFLEET_WHEEL_URL",
        "on an instance: presigned URL of the comfyfleet wheel to install (set by `instances up`)",
        secret=True,
    ),
    EnvVar("COMFYFLEET_WHEEL_SHA256", "on an instance: sha256 the downloaded wheel must have"),
    EnvVar("COMFYFLEET_WHEEL_NAME", "on an instance: the wheel's file name (pip needs it)"),
    # Prefect (read only to name the server in error messages)
    EnvVar("PREFECT_API_URL", "the Prefect server blocks are loaded from"),
)

VARIABLES: Mapping[str, EnvVar] = {v.name: v for v in _VARS}


def env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of ``name`` (or of its first set alias), stripped; ``None`` when unset/empty."""
    var = VARIABLES[name]
    source = os.environ if environ is None else environ
    for key in (var.name, *var.aliases):
        value = (source.get(key) or "").strip()
        if value:
            return value
    return None


def env_or(name: str, default: str, environ: Mapping[str, str] | None = None) -> str:
    """:func:`env` with a default for unset/empty."""
    value = env(name, environ)
    return default if value is None else value


def describe() -> list[tuple[str, str, str]]:
    """``(name, aliases, doc)`` rows for ``--help`` texts and the README table."""
    return [(v.name, ", ".join(v.aliases), v.doc) for v in _VARS]
