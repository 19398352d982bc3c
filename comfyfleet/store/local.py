"""A directory that behaves like a bucket: the embedded default store.

Layout under ``root``::

    <key>                                    the object's bytes (models/..., manifest.json, ...)
    .comfyfleet/meta/<key>.json              user metadata + content type, bound to the
                                             object by its etag
    .comfyfleet/uploads/<upload_id>/         unfinished multipart uploads: upload.json + parts
    .comfyfleet/tmp/                         files being written

Every write goes to ``.comfyfleet/tmp`` first, is fsynced, then ``os.replace``-d into place,
so a reader sees the old bytes or the new ones, never a mix. The temp dir is on the same
filesystem as the objects (same root), which ``os.replace`` needs.

A writer holds an exclusive ``flock`` on its temp file for as long as it writes, so a temp
file nobody has locked belongs to a process that died (kill -9, power loss).
:meth:`LocalStore.clean_stale_temp` (run by the mirror at the start of every run) removes
those, and anything in the temp dir older than a day.

The etag is opaque: inode, size and mtime of the data file. A metadata sidecar records the
etag of the bytes it describes; a sidecar that no longer matches (the process died between
writing the bytes and the sidecar) is ignored, so stale metadata such as an old sha256 is
never reported for new bytes.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from comfyfleet.errors import (
    ComfyfleetError,
    ObjectNotFound,
    PreconditionFailed,
    StoreAuthError,
    StoreConfigError,
    StoreError,
    UploadNotFound,
)
from comfyfleet.files import fsync_dir
from comfyfleet.store._common import check_chunking, clamp_range, normalize_metadata
from comfyfleet.store.base import (
    MAX_PARTS,
    MIN_PART_SIZE,
    MultipartUpload,
    ObjectInfo,
    PartInfo,
    check_key,
)

INTERNAL_DIR = ".comfyfleet"
STALE_TEMP_AGE_S = 24 * 3600.0
_TEMP_SUFFIX = ".tmp"
_PART_PREFIX = "part-"
_UPLOAD_INFO = "upload.json"
_COPY_CHUNK = 8 * 1024 * 1024


def _remove_if_unlocked(path: str) -> bool:
    """Unlink ``path`` when no process holds its flock (its writer is gone); True if removed.

    The lock is held across the unlink, and a writer that flocks after us sees its file
    unlinked (``st_nlink == 0``) and starts a new one, so a live write is never lost."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


def _copy_into(dst_fd: int, src: Path, size: int) -> None:
    """Append ``size`` bytes of ``src`` to ``dst_fd`` (in-kernel when the filesystem can)."""
    with open(src, "rb") as f:
        copied = 0
        try:
            while copied < size:
                n = os.copy_file_range(f.fileno(), dst_fd, size - copied)
                if n == 0:
                    break
                copied += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            f.seek(copied)
            while chunk := f.read(_COPY_CHUNK):
                os.write(dst_fd, chunk)
                copied += len(chunk)
    if copied != size:
        raise StoreError(f"part file {src} shrank while completing the upload ({copied}/{size})")


class LocalStore:
    """An ``ObjectStore`` in a local directory (created on the first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        if self.root.exists() and not self.root.is_dir():
            raise StoreConfigError(
                f"store path {self.root} exists and is not a directory",
                hint="pass a directory (it is created if missing) or an s3://bucket/prefix URI",
            )
        internal = self.root / INTERNAL_DIR
        self._meta_root = internal / "meta"
        self._uploads = internal / "uploads"
        self._tmp = internal / "tmp"

    # ------------------------------------------------------------------ identity

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def __str__(self) -> str:
        return self.uri

    def check(self) -> None:
        """Cheap preflight: the root (or the first existing parent) is a writable directory."""
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise StoreConfigError(
                f"store {self.uri}: {probe} is not a directory",
                hint="pass a directory path or an s3://bucket/prefix URI",
            )
        if not os.access(probe, os.W_OK | os.X_OK):
            raise StoreAuthError(
                f"store {self.uri}: no write permission on {probe}",
                store=self.uri,
                hint=f"fix the permissions of {probe} or choose another --store path",
            )

    # ------------------------------------------------------------------ paths and errors

    def _path(self, key: str) -> Path:
        check_key(key)
        if key.split("/", 1)[0] == INTERNAL_DIR:
            raise StoreConfigError(
                f"object key {key!r} is reserved for the local store's own files",
                hint=f"keys must not start with {INTERNAL_DIR}/",
            )
        return self.root.joinpath(*key.split("/"))

    def _meta_path(self, key: str) -> Path:
        return self._meta_root.joinpath(*f"{key}.json".split("/"))

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(
            f"no object {key!r} in {self.uri}",
            store=self.uri,
            hint="check the key; `comfyfleet store ls` lists what is there",
        )

    @contextlib.contextmanager
    def _translate(self, op: str, key: str) -> Iterator[None]:
        """Turn filesystem errors into the store error tree (reads map ENOENT to ObjectNotFound)."""
        try:
            yield
        except ComfyfleetError:
            raise
        except FileNotFoundError as exc:
            raise self._not_found(key) from exc
        except PermissionError as exc:
            raise StoreAuthError(
                f"{op} {key!r} in {self.uri}: permission denied ({exc.filename})",
                store=self.uri,
                hint=f"fix the permissions under {self.root}",
            ) from exc
        except (NotADirectoryError, IsADirectoryError) as exc:
            raise StoreError(
                f"{op} {key!r} in {self.uri}: a directory store cannot hold both an object "
                f"and keys below it with the same name",
                store=self.uri,
                hint="rename one of the two keys",
            ) from exc
        except OSError as exc:
            raise StoreError(
                f"{op} {key!r} in {self.uri} failed: {exc.strerror or exc}",
                store=self.uri,
                hint="check the disk (free space, mount, permissions) and retry",
            ) from exc

    # ------------------------------------------------------------------ low-level writes

    def _new_temp(self) -> tuple[int, Path]:
        """A new temp file, open for writing and flock-ed by this process until closed."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        while True:
            path = self._tmp / f"{uuid.uuid4().hex}{_TEMP_SUFFIX}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                return fd, path
            # A cleaner took it for a dead writer's file between open and flock: again.
            os.close(fd)

    def clean_stale_temp(self, max_age_s: float = STALE_TEMP_AGE_S) -> int:
        """Remove temp files no live writer holds (their lock is free) and anything in the
        temp dir older than ``max_age_s``; returns how many entries went."""
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0
        now = time.time()
        removed = 0
        for entry in entries:
            try:
                old = now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
                if entry.is_dir(follow_symlinks=False):
                    if old:
                        shutil.rmtree(entry.path, ignore_errors=True)
                        removed += 1
                elif entry.name.endswith(_TEMP_SUFFIX):
                    if old:
                        os.unlink(entry.path)
                        removed += 1
                    elif _remove_if_unlocked(entry.path):
                        removed += 1
            except FileNotFoundError:
                continue  # finished or cleaned meanwhile
        return removed

    def _write_temp(self, data: bytes) -> Path:
        fd, path = self._new_temp()
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return path

    def _place(self, tmp: Path, dest: Path, *, exclusive: bool) -> None:
        """Move a finished temp file to ``dest``; ``exclusive`` refuses an existing ``dest``."""
        try:
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
            except FileExistsError as exc:
                # An object already sits where a directory is needed ("a" vs "a/b").
                raise NotADirectoryError(errno.ENOTDIR, "parent is an object", str(dest)) from exc
            if exclusive:
                # link() fails if dest exists: of two racing writers exactly one wins.
                os.link(tmp, dest)
            else:
                os.replace(tmp, dest)
            fsync_dir(dest.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def _write_sidecar(
        self, key: str, etag: str, metadata: Mapping[str, str], content_type: str | None
    ) -> None:
        record = {"etag": etag, "metadata": dict(metadata), "content_type": content_type}
        tmp = self._write_temp(json.dumps(record, sort_keys=True).encode())
        self._place(tmp, self._meta_path(key), exclusive=False)

    def _read_sidecar(self, key: str, etag: str) -> dict[str, Any]:
        try:
            record = json.loads(self._meta_path(key).read_bytes())
        except (OSError, ValueError):
            return {}
        if not isinstance(record, dict) or record.get("etag") != etag:
            return {}
        return record

    def _info(self, key: str, st: os.stat_result, *, with_metadata: bool) -> ObjectInfo:
        etag = _etag(st)
        metadata: dict[str, str] = {}
        if with_metadata:
            raw = self._read_sidecar(key, etag).get("metadata") or {}
            metadata = {str(k): str(v) for k, v in raw.items()}
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=etag,
            last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC),
            metadata=metadata,
        )

    def _stat_object(self, key: str) -> os.stat_result:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise self._not_found(key) from exc
        if not path.is_file():
            raise self._not_found(key)
        return st

    # ------------------------------------------------------------------ reads

    def head(self, key: str) -> ObjectInfo:
        with self._translate("head", key):
            return self._info(key, self._stat_object(key), with_metadata=True)

    def exists(self, key: str) -> ObjectInfo | None:
        try:
            return self.head(key)
        except ObjectNotFound:
            return None

    def get_range(self, key: str, start: int, end: int) -> bytes:
        start, end = clamp_range(start, end)
        with self._translate("read", key):
            end = min(end, self._stat_object(key).st_size)
            if end <= start:
                return b""
            out = bytearray()
            with open(self._path(key), "rb") as f:
                # pread may return less than asked (Linux caps one read near 2 GiB).
                while len(out) < end - start:
                    chunk = os.pread(f.fileno(), end - start - len(out), start + len(out))
                    if not chunk:
                        break  # truncated underneath us; return what exists
                    out += chunk
            return bytes(out)

    def iter_bytes(
        self, key: str, start: int = 0, chunk_size: int = 8 * 1024 * 1024
    ) -> Iterator[bytes]:
        check_chunking(start, chunk_size)
        with self._translate("read", key):
            self._stat_object(key)
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator below
        return self._iter_file(key, f, start, chunk_size)

    def _iter_file(self, key: str, f: BinaryIO, start: int, chunk_size: int) -> Iterator[bytes]:
        with f, self._translate("read", key):
            f.seek(start)
            while chunk := f.read(chunk_size):
                yield chunk

    def get_bytes(self, key: str) -> bytes:
        with self._translate("read", key):
            self._stat_object(key)
            return self._path(key).read_bytes()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Start at the deepest directory the prefix names, then filter by the full prefix.
        parts = prefix.split("/")
        start_dir = self.root.joinpath(*parts[:-1]) if len(parts) > 1 else self.root
        if len(parts) > 1:
            check_key("/".join(parts[:-1]))
            if parts[0] == INTERNAL_DIR:
                return iter(())
        found: list[ObjectInfo] = []
        with self._translate("list", prefix or "/"):
            if not start_dir.is_dir():
                return iter(())
            for dirpath, dirnames, filenames in os.walk(start_dir):
                here = Path(dirpath)
                if here == self.root:
                    dirnames[:] = [d for d in dirnames if d != INTERNAL_DIR]
                rel_dir = here.relative_to(self.root).as_posix()
                for name in filenames:
                    key = name if rel_dir == "." else f"{rel_dir}/{name}"
                    if not key.startswith(prefix):
                        continue
                    try:
                        st = (here / name).stat()
                    except FileNotFoundError:
                        continue  # deleted while listing
                    found.append(self._info(key, st, with_metadata=False))
        # S3 lists in byte order of the whole key, which a directory walk does not give.
        found.sort(key=lambda info: info.key.encode())
        return iter(found)

    # ------------------------------------------------------------------ writes

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        content_type: str | None = None,
    ) -> ObjectInfo:
        dest = self._path(key)
        meta = normalize_metadata(metadata)
        with self._translate("write", key):
            tmp = self._write_temp(data)
            try:
                self._place(tmp, dest, exclusive=if_none_match)
            except FileExistsError as exc:
                raise PreconditionFailed(
                    f"{key!r} already exists in {self.uri} (conditional put)",
                    store=self.uri,
                    hint="another writer created it first; read it instead of overwriting",
                ) from exc
            info = self._info(key, dest.stat(), with_metadata=False)
            self._write_sidecar(key, info.etag, meta, content_type)
        return ObjectInfo(info.key, info.size, info.etag, info.last_modified, meta)

    def set_metadata(self, key: str, metadata: Mapping[str, str]) -> ObjectInfo:
        meta = normalize_metadata(metadata)
        with self._translate("set metadata of", key):
            info = self._info(key, self._stat_object(key), with_metadata=False)
            content_type = self._read_sidecar(key, info.etag).get("content_type")
            self._write_sidecar(key, info.etag, meta, content_type)
        return ObjectInfo(info.key, info.size, info.etag, info.last_modified, meta)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._translate("delete", key):
            for p in (path, self._meta_path(key)):
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    p.unlink()
            # S3 has no directories: drop the ones this delete emptied.
            for base, p in ((self.root, path), (self._meta_root, self._meta_path(key))):
                parent = p.parent
                while parent != base and base in parent.parents:
                    try:
                        parent.rmdir()
                    except OSError:
                        break
                    parent = parent.parent

    # ------------------------------------------------------------------ multipart

    def create_multipart(
        self, key: str, *, metadata: Mapping[str, str] | None = None
    ) -> LocalMultipartUpload:
        self._path(key)
        meta = normalize_metadata(metadata)
        # Time-ordered ids keep find_multipart's "newest first" stable within a process.
        upload_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        with self._translate("start upload of", key):
            tmp_dir = self._tmp / f"upload-{upload_id}"
            tmp_dir.mkdir(parents=True)
            info = {"key": key, "metadata": meta, "initiated_ns": time.time_ns()}
            (tmp_dir / _UPLOAD_INFO).write_text(json.dumps(info))
            self._uploads.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_dir, self._uploads / upload_id)
        return LocalMultipartUpload(self, key, upload_id)

    def find_multipart(self, key: str) -> builtins.list[MultipartUpload]:
        self._path(key)
        found: list[tuple[int, str]] = []
        with self._translate("list uploads of", key):
            if not self._uploads.is_dir():
                return []
            for entry in os.scandir(self._uploads):
                try:
                    info = json.loads(Path(entry.path, _UPLOAD_INFO).read_text())
                except (OSError, ValueError):
                    continue
                if info.get("key") == key:
                    found.append((int(info.get("initiated_ns", 0)), entry.name))
        found.sort(reverse=True)
        return [LocalMultipartUpload(self, key, upload_id) for _, upload_id in found]

    def presign_get(self, key: str, expires_s: int = 3600) -> str | None:
        self._path(key)
        return None


class LocalMultipartUpload:
    """Parts are files in ``.comfyfleet/uploads/<id>/``; ``complete`` joins them atomically."""

    def __init__(self, store: LocalStore, key: str, upload_id: str) -> None:
        self._store = store
        self._key = key
        self._upload_id = upload_id
        self._dir = store._uploads / upload_id

    @property
    def key(self) -> str:
        return self._key

    @property
    def upload_id(self) -> str:
        return self._upload_id

    def __repr__(self) -> str:
        return f"LocalMultipartUpload(key={self._key!r}, upload_id={self._upload_id!r})"

    def _gone(self) -> UploadNotFound:
        return UploadNotFound(
            f"multipart upload {self._upload_id} of {self._key!r} in {self._store.uri} "
            "no longer exists (aborted or completed)",
            store=self._store.uri,
            hint="start a new upload",
        )

    def _info(self) -> dict[str, Any]:
        try:
            info: dict[str, Any] = json.loads((self._dir / _UPLOAD_INFO).read_text())
        except FileNotFoundError as exc:
            raise self._gone() from exc
        return info

    def _part_path(self, number: int) -> Path:
        return self._dir / f"{_PART_PREFIX}{number:05d}"

    def put_part(self, number: int, data: bytes) -> PartInfo:
        if not 1 <= number <= MAX_PARTS:
            raise ValueError(f"part number {number} is outside 1..{MAX_PARTS}")
        with self._store._translate("upload part of", self._key):
            self._info()
            tmp = self._store._write_temp(data)
            try:
                os.replace(tmp, self._part_path(number))
            except FileNotFoundError as exc:
                raise self._gone() from exc
            finally:
                tmp.unlink(missing_ok=True)
            st = self._part_path(number).stat()
        return PartInfo(number=number, etag=_etag(st), size=st.st_size)

    def list_parts(self) -> list[PartInfo]:
        parts: list[PartInfo] = []
        with self._store._translate("list parts of", self._key):
            self._info()
            try:
                entries = list(os.scandir(self._dir))
            except FileNotFoundError as exc:
                raise self._gone() from exc
            for entry in entries:
                if not entry.name.startswith(_PART_PREFIX):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                number = int(entry.name[len(_PART_PREFIX) :])
                parts.append(PartInfo(number=number, etag=_etag(st), size=st.st_size))
        parts.sort(key=lambda p: p.number)
        return parts

    def complete(self, parts: list[PartInfo]) -> ObjectInfo:
        store = self._store
        with store._translate("complete upload of", self._key):
            info = self._info()
            self._check_parts(parts)
            fd, tmp = store._new_temp()
            try:
                for part in parts:
                    _copy_into(fd, self._part_path(part.number), part.size)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            dest = store._path(self._key)
            store._place(tmp, dest, exclusive=False)
            meta = {str(k): str(v) for k, v in (info.get("metadata") or {}).items()}
            placed = store._info(self._key, dest.stat(), with_metadata=False)
            store._write_sidecar(self._key, placed.etag, meta, None)
            shutil.rmtree(self._dir, ignore_errors=True)
        return ObjectInfo(placed.key, placed.size, placed.etag, placed.last_modified, meta)

    def _check_parts(self, parts: list[PartInfo]) -> None:
        """The checks S3 makes, so code that works here also works against a bucket."""
        where = f"multipart upload of {self._key!r} in {self._store.uri}"
        if not parts:
            raise StoreError(f"{where}: no parts given to complete", store=self._store.uri)
        numbers = [p.number for p in parts]
        if numbers != sorted(set(numbers)):
            raise StoreError(
                f"{where}: parts must be listed in ascending order without repeats",
                store=self._store.uri,
            )
        for i, part in enumerate(parts):
            try:
                st = self._part_path(part.number).stat()
            except FileNotFoundError as exc:
                if not self._dir.exists():
                    raise self._gone() from exc
                raise StoreError(
                    f"{where}: part {part.number} was never uploaded",
                    store=self._store.uri,
                    hint="list_parts() shows what the store has",
                ) from exc
            if _etag(st) != part.etag or st.st_size != part.size:
                raise StoreError(
                    f"{where}: part {part.number} does not match the uploaded part "
                    f"(etag or size differs)",
                    store=self._store.uri,
                    hint="re-upload the part or take the PartInfo from list_parts()",
                )
            if i < len(parts) - 1 and st.st_size < MIN_PART_SIZE:
                raise StoreError(
                    f"{where}: part {part.number} is {st.st_size} bytes; every part but the "
                    f"last must be at least {MIN_PART_SIZE} bytes",
                    store=self._store.uri,
                    hint="use larger parts",
                )

    def abort(self) -> None:
        # Idempotent, like cleanup code wants: aborting a finished upload is not an error.
        shutil.rmtree(self._dir, ignore_errors=True)
