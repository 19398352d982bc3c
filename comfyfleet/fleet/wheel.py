"""comfyfleet for the instances: this checkout's wheel, put in the store, reachable by URL.

comfyfleet is not on PyPI, so a rented instance installs the exact code that rented it:
``instances up`` builds the wheel of the project it runs from (or takes ``--wheel PATH``),
uploads it into the fleet's store and hands the instance a presigned GET URL and the
wheel's sha256 (:func:`wheel_env`). The on-start script downloads it, checks the sha256 and
only then runs ``pip install`` (dependencies come from the instance's package index).

- **Build** (:func:`build_wheel`): ``pip wheel --no-deps`` with the running interpreter, from
  a scratch copy of the project's sources (setuptools builds in-tree and would otherwise pick
  up stale modules from a ``build/`` folder, or leave one behind). Without build isolation,
  and so offline, when the interpreter already has the build requirements of
  ``pyproject.toml``; with pip's isolated build otherwise (it fetches them from the index).
- **Cache** (:func:`cached_wheel`): a wheel is not byte-reproducible (zip timestamps), so
  ``instances up`` keeps the one it built under ``$COMFYFLEET_HOME/wheels/<source digest>/``
  and builds again only when a source file changed. The same code is then the same object
  in the store, uploaded once.
- **Key**: ``wheels/<sha256>/<filename>``. Content-addressed, so an upload never replaces the
  bytes an earlier fleet's URL points at (its instances would fail the sha256 check on a
  reboot), the same wheel is uploaded once, and the last segment is the wheel's own file
  name, which pip needs. The sha256 is also stored with the object (metadata), as for models.
- **URL**: a presigned GET, valid ``expires_s`` (S3 allows at most 7 days): a read
  capability for that one object. It goes into the instance's environment and nowhere else
  (no report, log or ``repr`` shows it).
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from comfyfleet.config import env_or
from comfyfleet.errors import ConfigError, FleetError
from comfyfleet.files import write_atomic
from comfyfleet.store.base import SHA256_METADATA_KEY, ObjectStore

WHEELS_PREFIX = "wheels"
DEFAULT_URL_HOURS = 48.0
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4's limit for a presigned URL
# Environment of the instance (read by the on-start script).
WHEEL_URL_ENV = "COMFYFLEET_WHEEL_URL"
WHEEL_SHA256_ENV = "COMFYFLEET_WHEEL_SHA256"
WHEEL_NAME_ENV = "COMFYFLEET_WHEEL_NAME"
# Never copied into the scratch build tree.
_SKIP = ("__pycache__", "build", "dist", "*.egg-info", ".*")


@dataclass(frozen=True)
class PublishedWheel:
    """A wheel in the store. ``url`` is a read capability: kept out of ``repr``."""

    filename: str
    sha256: str
    key: str
    size: int
    expires_s: int
    url: str = field(repr=False)


def project_root() -> Path:
    """The source checkout this comfyfleet runs from (the folder with ``pyproject.toml``)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(
            "comfyfleet runs from an installed package, not a source checkout: there is no "
            "pyproject.toml to build the instances' wheel from",
            hint="pass --wheel PATH (a comfyfleet wheel), or run from a checkout",
        )
    return root


def _pyproject(root: Path) -> dict[str, object]:
    path = root / "pyproject.toml"
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"{path} cannot be read: {exc}", hint="fix it, or pass --wheel PATH"
        ) from exc


def build_requirements_met(root: Path) -> bool:
    """True when this interpreter has every ``build-system.requires`` of the project, so
    pip can build without an isolated environment (and without the index)."""
    build_system = _pyproject(root).get("build-system")
    requires = build_system.get("requires", []) if isinstance(build_system, dict) else []
    for spec in requires:
        try:
            requirement = Requirement(str(spec))
            installed = importlib.metadata.version(requirement.name)
        except (InvalidRequirement, importlib.metadata.PackageNotFoundError):
            return False
        if not requirement.specifier.contains(installed, prereleases=True):
            return False
    return True


def _copy_sources(root: Path, dest: Path) -> None:
    """The files a build reads: top-level files and the package folders that
    ``[tool.setuptools.packages.find] include`` names (every folder when it names none)."""
    tool = _pyproject(root).get("tool")
    setuptools_cfg = tool.get("setuptools", {}) if isinstance(tool, dict) else {}
    packages = setuptools_cfg.get("packages", {}) if isinstance(setuptools_cfg, dict) else {}
    find = packages.get("find", {}) if isinstance(packages, dict) else {}
    include = [str(p) for p in find.get("include", [])] if isinstance(find, dict) else []
    ignore = shutil.ignore_patterns(*_SKIP)
    for entry in root.iterdir():
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in _SKIP):
            continue
        if entry.is_file():
            shutil.copy2(entry, dest / entry.name)
        elif entry.is_dir() and (
            not include or any(fnmatch.fnmatch(entry.name, p.split(".")[0]) for p in include)
        ):
            shutil.copytree(entry, dest / entry.name, ignore=ignore)


def build_wheel(out_dir: Path, root: Path | None = None, *, timeout_s: float = 600) -> Path:
    """Build the project's wheel into ``out_dir``; its path (see the module docstring)."""
    root = root or project_root()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="comfyfleet-wheel-") as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        _copy_sources(root, source)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps"]
        command += ["--disable-pip-version-check", "-q", "-w", str(out_dir), str(source)]
        if build_requirements_met(root):
            command.insert(5, "--no-build-isolation")
        before = set(out_dir.glob("*.whl"))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise FleetError(
                f"building the comfyfleet wheel took over {timeout_s:.0f} s",
                hint="pass --wheel PATH with a wheel built beforehand (pip wheel --no-deps .)",
            ) from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FleetError(
            f"building the comfyfleet wheel failed: {last}",
            hint="run `pip wheel --no-deps .` in the checkout to see why, or pass --wheel PATH",
        )
    built = sorted(set(out_dir.glob("comfyfleet-*.whl")) - before) or sorted(
        out_dir.glob("comfyfleet-*.whl")
    )
    if not built:
        raise FleetError(f"pip built no comfyfleet wheel into {out_dir}")
    return built[-1]


def source_digest(root: Path) -> str:
    """sha256 over the build inputs (paths and bytes of what :func:`_copy_sources` takes)."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="comfyfleet-src-") as scratch:
        copy = Path(scratch)
        _copy_sources(root, copy)
        for path in sorted(p for p in copy.rglob("*") if p.is_file()):
            digest.update(path.relative_to(copy).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def wheel_cache_dir() -> Path:
    return Path(env_or("COMFYFLEET_HOME", "~/.comfyfleet")).expanduser() / "wheels"


def cached_wheel(root: Path | None = None, cache_dir: Path | None = None) -> Path:
    """This checkout's wheel, built only when its sources changed since the last build."""
    root = root or project_root()
    slot = (cache_dir or wheel_cache_dir()) / source_digest(root)[:32]
    found = sorted(slot.glob("comfyfleet-*.whl"))
    if found:
        return found[-1]
    with tempfile.TemporaryDirectory(prefix="comfyfleet-wheelhouse-") as out:
        built = build_wheel(Path(out), root)
        slot.mkdir(parents=True, exist_ok=True)
        write_atomic(slot / built.name, built.read_bytes())
    return slot / built.name


def publish_wheel(
    store: ObjectStore, wheel: Path, *, expires_s: int = int(DEFAULT_URL_HOURS * 3600)
) -> PublishedWheel:
    """Upload ``wheel`` to ``wheels/<sha256>/<filename>`` (once) and presign it."""
    if not wheel.is_file() or wheel.suffix != ".whl":
        raise ConfigError(f"{wheel} is not a wheel file", hint="pass a comfyfleet-*.whl")
    if not 60 <= expires_s <= MAX_PRESIGN_S:
        raise ConfigError(
            f"a wheel URL valid {expires_s} s: it must be between 60 s and 7 days",
            hint="pick a validity that covers the fleet's boots (default 48 h)",
        )
    data = wheel.read_bytes()  # a few hundred KB
    sha256 = hashlib.sha256(data).hexdigest()
    key = f"{WHEELS_PREFIX}/{sha256}/{wheel.name}"
    present = store.exists(key)
    if present is None or present.sha256 != sha256:
        store.put_bytes(
            key,
            data,
            metadata={SHA256_METADATA_KEY: sha256},
            content_type="application/octet-stream",
        )
    url = store.presign_get(key, expires_s=expires_s)
    if not url:
        raise ConfigError(
            f"the store {store.uri} cannot hand out URLs, so a rented instance cannot "
            "download comfyfleet from it",
            hint="use an S3-compatible store (--store s3://bucket/prefix or --store-block)",
        )
    return PublishedWheel(wheel.name, sha256, key, len(data), expires_s, url)


def wheel_env(published: PublishedWheel) -> dict[str, str]:
    """What the instance's on-start script reads to fetch, check and install the wheel."""
    return {
        WHEEL_URL_ENV: published.url,
        WHEEL_SHA256_ENV: published.sha256,
        WHEEL_NAME_ENV: published.filename,
    }
