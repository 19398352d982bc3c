"""comfyfleet.files.write_atomic: the final name holds the old bytes or all the new ones."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import comfyfleet.files as files
from comfyfleet.files import write_atomic


def test_writes_text_and_bytes_creating_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    assert write_atomic(target, "héllo\n") == target
    assert target.read_bytes() == "héllo\n".encode()
    write_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert os.listdir(target.parent) == ["out.txt"]


def test_mode_and_umask(tmp_path: Path) -> None:
    script = write_atomic(tmp_path / "s.sh", "#!/bin/sh\n", mode=0o755)
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    old = os.umask(0o022)
    try:
        plain = write_atomic(tmp_path / "p.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o644  # not mkstemp's 0600


def test_data_is_fsynced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.bin"
    seen: list[bool] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        seen.append(target.exists())
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", recording_fsync)
    write_atomic(target, b"data")
    assert seen[0] is False  # the file's data, while the final name does not exist yet
    assert len(seen) == 2  # then the folder, after the rename


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "manifest.json"
    target.write_text("old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_a_folder_as_target_is_refused_without_a_temp(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "dir", "x")
    assert os.listdir(tmp_path) == ["dir"]
