"""The instances' wheel: built from this checkout, uploaded once under its sha256, and the
presigned URL hands back the very same bytes (real SeaweedFS)."""

from __future__ import annotations

import hashlib
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyfleet.errors import ConfigError, FleetError
from comfyfleet.fleet import wheel as wheel_module
from comfyfleet.fleet.wheel import (
    WHEEL_NAME_ENV,
    WHEEL_SHA256_ENV,
    WHEEL_URL_ENV,
    _copy_sources,
    build_requirements_met,
    build_wheel,
    cached_wheel,
    project_root,
    publish_wheel,
    source_digest,
    wheel_env,
)
from comfyfleet.pull.transfer import hash_file

BUILD_SECONDS: list[float] = []


@pytest.fixture(scope="session")
def built_wheel() -> Path:
    """This checkout's wheel, built once per session (in the session's COMFYFLEET_HOME
    cache, which ``instances up`` in other tests reuses)."""
    started = time.monotonic()
    wheel = cached_wheel()
    BUILD_SECONDS.append(time.monotonic() - started)
    return wheel


def test_the_wheel_holds_the_packages_data_and_entry_point_and_nothing_else(
    built_wheel: Path,
) -> None:
    assert built_wheel.name.startswith("comfyfleet-") and built_wheel.suffix == ".whl"
    names = zipfile.ZipFile(built_wheel).namelist()
    for expected in (
        "comfyfleet/fleet/wheel.py",
        "comfyfleet/fleet/gateway.py",
        "comfyfleet/data/models.yaml",
        "comfyfleet/py.typed",
        "flows/fleet.py",
        "blocks/__init__.py",
    ):
        assert expected in names, expected
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "__pycache__" in n]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(built_wheel).read(entry_points).decode()
    assert "comfyfleet = comfyfleet.cli:main" in text
    assert BUILD_SECONDS and BUILD_SECONDS[0] < 60


class CountingStore:
    """The real store, counting uploads."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.puts = 0

    def put_bytes(self, key: str, data: bytes, **kwargs: Any) -> Any:
        self.puts += 1
        return self._store.put_bytes(key, data, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.s3
def test_published_wheel_downloads_byte_for_byte_by_its_presigned_url(
    built_wheel: Path, s3_store: Any
) -> None:
    store = CountingStore(s3_store)
    published = publish_wheel(store, built_wheel, expires_s=3600)
    data = built_wheel.read_bytes()
    assert published.sha256 == hashlib.sha256(data).hexdigest() == hash_file(built_wheel)
    assert published.key == f"wheels/{published.sha256}/{built_wheel.name}"
    assert (published.filename, published.size) == (built_wheel.name, len(data))
    assert s3_store.head(published.key).sha256 == published.sha256
    assert store.puts == 1

    downloaded = httpx.get(published.url, timeout=10)
    assert downloaded.status_code == 200
    assert hashlib.sha256(downloaded.content).hexdigest() == published.sha256
    assert downloaded.content == data
    # pip takes the file name from the URL's path: it must end with the wheel's name.
    assert httpx.URL(published.url).path.endswith("/" + built_wheel.name)

    again = publish_wheel(store, built_wheel, expires_s=7200)
    assert store.puts == 1  # the same bytes are not uploaded twice
    assert again.key == published.key and again.url != published.url

    env = wheel_env(published)
    assert env == {
        WHEEL_URL_ENV: published.url,
        WHEEL_SHA256_ENV: published.sha256,
        WHEEL_NAME_ENV: built_wheel.name,
    }
    assert published.url not in repr(published)
    # Without the signature the object is not readable: the URL is the capability.
    assert httpx.get(published.url.split("?")[0], timeout=10).status_code in (401, 403)


@pytest.mark.s3
def test_a_changed_wheel_gets_a_new_key_and_the_old_url_keeps_its_bytes(
    tmp_path: Path, built_wheel: Path, s3_store: Any
) -> None:
    first = publish_wheel(s3_store, built_wheel)
    changed = tmp_path / built_wheel.name
    changed.write_bytes(built_wheel.read_bytes() + b"\0")  # same name, other bytes
    second = publish_wheel(s3_store, changed)
    assert second.key != first.key and second.filename == first.filename
    assert hashlib.sha256(httpx.get(first.url, timeout=10).content).hexdigest() == first.sha256


def test_a_store_without_urls_or_a_bad_validity_is_refused(
    tmp_path: Path, local_store: Any
) -> None:
    wheel = tmp_path / "comfyfleet-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK not really")
    with pytest.raises(ConfigError, match="cannot hand out URLs"):
        publish_wheel(local_store, wheel)
    with pytest.raises(ConfigError, match="between 60 s and 7 days"):
        publish_wheel(local_store, wheel, expires_s=8 * 24 * 3600)
    with pytest.raises(ConfigError, match="is not a wheel"):
        publish_wheel(local_store, tmp_path / "missing.whl")


def _project(tmp_path: Path, pyproject: str, files: Mapping[str, str]) -> Path:
    root = tmp_path / "project"
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(pyproject)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_scratch_copy_takes_the_packages_and_leaves_stale_build_output(
    tmp_path: Path,
) -> None:
    root = _project(
        tmp_path,
        '[tool.setuptools.packages.find]\ninclude = ["pkg*"]\n',
        {
            "README.md": "r",
            "pkg/__init__.py": "",
            "pkg/data/x.yaml": "a: 1",
            "pkg/__pycache__/m.cpython-311.pyc": "",
            "pkg_extra/__init__.py": "",
            "tests/test_x.py": "",
            "build/lib/pkg/stale.py": "",
            "pkg.egg-info/PKG-INFO": "",
            ".venv/bin/python": "",
        },
    )
    dest = tmp_path / "copy"
    dest.mkdir()
    _copy_sources(root, dest)
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == [
        "README.md",
        "pkg/__init__.py",
        "pkg/data/x.yaml",
        "pkg_extra/__init__.py",
        "pyproject.toml",
    ]


def test_build_requirements_decide_the_isolation(tmp_path: Path) -> None:
    met = _project(tmp_path, '[build-system]\nrequires = ["pip>=1"]\n', {})
    assert build_requirements_met(met)
    (met / "pyproject.toml").write_text('[build-system]\nrequires = ["pip>=999"]\n')
    assert not build_requirements_met(met)
    (met / "pyproject.toml").write_text('[build-system]\nrequires = ["no-such-dist-xyz"]\n')
    assert not build_requirements_met(met)
    assert (project_root() / "comfyfleet" / "fleet" / "wheel.py").is_file()


def test_a_failing_build_is_one_line_with_a_hint(tmp_path: Path) -> None:
    root = _project(tmp_path, "[project\nname = broken", {})
    with pytest.raises(ConfigError, match="pyproject.toml cannot be read"):
        build_wheel(tmp_path / "out", root)
    good_toml_bad_project = _project(
        tmp_path / "b",
        '[build-system]\nrequires = []\nbuild-backend = "no_such_backend_xyz"\n',
        {},
    )
    with pytest.raises(FleetError, match="building the comfyfleet wheel failed") as failed2:
        build_wheel(tmp_path / "out2", good_toml_bad_project)
    assert "pip wheel --no-deps" in (failed2.value.hint or "")


def test_the_cache_builds_again_only_when_a_source_changed(
    built_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_build(*_a: object, **_k: object) -> Path:
        raise AssertionError("built again although nothing changed")

    monkeypatch.setattr(wheel_module, "build_wheel", no_build)
    assert cached_wheel() == built_wheel
    root = _project(
        tmp_path, '[tool.setuptools.packages.find]\ninclude = ["pkg*"]\n', {"pkg/a.py": "x = 1"}
    )
    before = source_digest(root)
    (root / "tests").mkdir()
    (root / "tests" / "t.py").write_text("not a build input")
    assert source_digest(root) == before
    (root / "pkg" / "a.py").write_text("x = 2")
    assert source_digest(root) != before


def test_an_installed_comfyfleet_asks_for_a_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = tmp_path / "site-packages" / "comfyfleet" / "fleet" / "wheel.py"
    monkeypatch.setattr(wheel_module, "__file__", str(installed))
    with pytest.raises(ConfigError, match="not a source checkout") as refused:
        cached_wheel()
    assert "--wheel PATH" in (refused.value.hint or "")
