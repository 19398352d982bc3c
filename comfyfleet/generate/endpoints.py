"""The ComfyUIs a batch runs on: URL, the name result rows carry, and the gateway token.

A batch spreads over one or many ComfyUI endpoints (:mod:`comfyfleet.generate.batch`). Each is
a :class:`ComfyEndpoint`. Tokens never travel on a command line or as a flow parameter: they
are named by *reference* and read where the batch runs:

- ``token_env``: a comfyfleet environment variable holding the token
  (``COMFYFLEET_COMFY_TOKEN``; every secret variable of :mod:`comfyfleet.config` is allowed);
- ``token_file``: a file whose content is the token (a mounted secret, ``chmod 600``).

``--comfy-url URL [--comfy-url URL ...] [--comfy-token-env NAME]`` gives every URL the same
token; an endpoints file (``--comfy-endpoints FILE``) is a JSON list of
``{"url": ..., "name": ..., "token_env": ... | "token_file": ...}``. The fleet passes
:class:`ComfyEndpoint` objects with the token itself (``SecretStr``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from comfyfleet import config
from comfyfleet.errors import ConfigError
from comfyfleet.sources.base import display_url

DEFAULT_TOKEN_ENV = "COMFYFLEET_COMFY_TOKEN"
_REF_KEYS = frozenset({"url", "name", "token_env", "token_file"})


@dataclass(frozen=True)
class ComfyEndpoint:
    """One ComfyUI: ``url``, ``name`` (the ``endpoint`` column of results; default: the URL
    without credentials or query) and ``token`` (bearer token of its gateway, or None).
    ``SecretStr`` keeps the token out of ``repr``."""

    url: str
    name: str = ""
    token: SecretStr | None = None

    @property
    def label(self) -> str:
        return self.name or display_url(self.url)


def read_token(*, token_env: str | None = None, token_file: str | None = None) -> SecretStr:
    """The token a reference names (an environment variable or a file)."""
    if token_env and token_file:
        raise ConfigError(
            "an endpoint names both token_env and token_file", hint="give one of them"
        )
    if token_file:
        path = Path(token_file).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the token file {path}: {exc.strerror}",
                hint="point token_file at a readable file holding only the token",
            ) from None
        if not value:
            raise ConfigError(f"the token file {path} is empty", hint="write the token into it")
        return SecretStr(value)
    name: str = token_env or DEFAULT_TOKEN_ENV
    var = config.VARIABLES.get(name)
    if var is None or not var.secret:
        known = sorted(v.name for v in config.VARIABLES.values() if v.secret)
        raise ConfigError(
            f"{name} is not a comfyfleet secret variable",
            hint=f"put the token in {DEFAULT_TOKEN_ENV} (or one of {', '.join(known)}), "
            "or use token_file",
        )
    from_env = config.env(name)
    if from_env is None:
        raise ConfigError(f"{name} is not set", hint=f"export {name}=<the gateway token>")
    return SecretStr(from_env)


def endpoint_from_ref(ref: Mapping[str, Any]) -> ComfyEndpoint:
    """A :class:`ComfyEndpoint` from ``{"url", "name"?, "token_env"?, "token_file"?}``."""
    unknown = set(ref) - _REF_KEYS
    if unknown:
        raise ConfigError(
            f"endpoint entry has unknown keys: {', '.join(sorted(unknown))}",
            hint="an entry has url, and optionally name and token_env or token_file "
            "(tokens are never written into the entry itself)",
        )
    url = str(ref.get("url") or "").strip()
    if not url:
        raise ConfigError("an endpoint entry has no url", hint='add "url": "http://host:port"')
    token_env, token_file = ref.get("token_env"), ref.get("token_file")
    token = (
        read_token(token_env=str(token_env or "") or None, token_file=str(token_file or "") or None)
        if token_env or token_file
        else None
    )
    return ComfyEndpoint(url=url, name=str(ref.get("name") or ""), token=token)


def endpoint_refs(
    urls: Sequence[str] = (), *, token_env: str | None = None, endpoints_file: str | None = None
) -> list[dict[str, str]]:
    """Token-free references for ``urls`` (all with ``token_env``) plus the entries of an
    endpoints file: what a CLI or a flow parameter may carry."""
    refs: list[dict[str, str]] = []
    for url in urls:
        ref = {"url": url}
        if token_env:
            ref["token_env"] = token_env
        refs.append(ref)
    if endpoints_file:
        refs.extend(_read_refs(Path(endpoints_file).expanduser()))
    if not refs:
        raise ConfigError(
            "no ComfyUI endpoint given",
            hint="pass --comfy-url URL (repeatable) or --comfy-endpoints FILE",
        )
    return refs


def resolve_endpoints(refs: Sequence[Mapping[str, Any]]) -> list[ComfyEndpoint]:
    """The endpoints, tokens read; names unique (a repeated name is refused)."""
    endpoints = [endpoint_from_ref(ref) for ref in refs]
    check_unique(endpoints)
    return endpoints


def check_unique(endpoints: Sequence[ComfyEndpoint]) -> None:
    labels = [e.label for e in endpoints]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise ConfigError(
            f"endpoint named twice: {', '.join(repeated)}",
            hint="each ComfyUI once; give endpoints distinct names",
        )


def _read_refs(path: Path) -> list[dict[str, str]]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read endpoints file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(
            f"endpoints file {path} is not JSON ({exc})",
            hint='write a list: [{"url": "http://host:8188", "name": "a", "token_env": "..."}]',
        ) from None
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise ConfigError(
            f"endpoints file {path} is not a JSON list of objects",
            hint='write a list: [{"url": "http://host:8188", "name": "a", "token_env": "..."}]',
        )
    if any("token" in e for e in data):
        raise ConfigError(
            f"endpoints file {path} holds a token itself",
            hint="name it instead: token_env (a variable) or token_file (a file)",
        )
    return [{str(k): str(v) for k, v in e.items()} for e in data]
