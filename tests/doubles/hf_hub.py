"""A Hugging Face Hub test server for the real ``huggingface_hub`` (and comfyfleet's stream).

Two servers on 127.0.0.1, free ports: the hub (``endpoint``, use as ``HF_ENDPOINT``) and a
CDN on another port, i.e. another origin, which is what makes huggingface_hub 2.x stop at
the redirect and read the metadata headers (sources-api.md, 2.x addendum)::

    with FakeHub() as hub:
        commit = hub.add_file("org/repo", "model.safetensors", data)      # LFS by extension
        hub.add_repo("org/gated", gated="auto"); hub.grant("org/gated", "hf_token")
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)

Wire behaviour reproduced (sources-api.md A2-A6):

* ``HEAD|GET /{repo}/resolve/{rev}/{path}``: an LFS file answers ``302`` with an absolute
  ``Location`` on the CDN (presigned-looking: ``Expires``/``Signature`` checked by the
  CDN, ``response-content-disposition``), ``X-Repo-Commit``, ``X-Linked-Etag: "<sha256>"``,
  ``X-Linked-Size`` and ``ETag`` on the 302 itself; a regular file answers ``200`` with
  ``ETag: "<git blob sha1>"``, ``Content-Length``, ``X-Repo-Commit`` and its bytes
  (Range/206). The revision is percent-decoded (``refs%2Fpr%2F1``).
* A renamed repo (``rename_repo``) answers every old URL with a **relative** ``307``.
* CDN ``GET|HEAD /repos/..../<sha256>?...``: bytes with ``Range`` -> ``206`` +
  ``Content-Range``; an expired or forged signature -> ``403`` (XML ``AccessDenied``); a
  request that carries ``Authorization`` -> ``400`` (a presigned URL plus a header is two
  auth mechanisms, as S3-style storage answers): proves the token never leaves the hub.
* ``GET /api/models/{repo}[/revision/{rev}]`` (``blobs=true`` -> siblings with size,
  blobId, ``lfs{sha256,size,pointerSize}``; ``expand=`` filters fields), ``GET
  /api/models/{repo}/tree/{rev}[/{path%2F...}]?recursive=&expand=`` (pages of
  ``tree_page_size`` entries, 50 with ``expand``, ``Link: <...>; rel="next"``), ``POST
  /api/models/{repo}/paths-info/{rev}`` (form ``paths=..&expand=..``; missing paths
  omitted), ``GET /api/models/{repo}/auth-check``. Entries:
  ``{"type":"file","path","size","oid","lfs":{"oid","size","pointerSize"}}``.
* Errors carry ``X-Error-Code`` and ``X-Error-Message`` and a JSON ``{"error": ...}``:
  missing repo -> ``RepoNotFound`` "Repository not found" (401 anonymous, 404 with a
  token); private repo without access -> the same; gated repo -> ``GatedRepo`` with 401
  "Access to model {repo} is restricted. You must be authenticated to access it." when
  anonymous, 403 "Access to model {repo} is restricted and you are not in the authorized
  list. Visit {endpoint}/{repo} to ask for access." when the token was not granted;
  unknown revision -> 404 ``RevisionNotFound`` "Invalid rev id: {rev}"; missing file ->
  404 ``EntryNotFound`` "Entry not found"; a token the hub does not know -> 401 with
  ``X-Error-Message: Invalid credentials in Authorization header`` (no code); a disabled
  repo -> 403 "Access to this resource is disabled.".

Gating applies to file bytes (``/resolve/``, ``auth-check``); metadata of a gated repo is
public, as on the Hub. Tokens are accepted once registered with ``add_token`` or
``grant``. Fault knobs: ``hub.faults`` (see :mod:`tests.doubles.faults`); every request is
recorded in ``hub.requests``.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode

from tests.doubles.faults import (
    Faults,
    Recorded,
    Request,
    Server,
    fault_status,
    refuse_storage_request,
    send_s3_error,
    serve_bytes,
)

_TEXT_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml", ".py", ".gitattributes", ".cfg")
_SECRET = b"fake-cdn-signing-key"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    ).encode()


@dataclass(frozen=True)
class HubFile:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, len(self.data))

    @property
    def oid(self) -> str:
        """Git blob id: of the pointer file for LFS files, of the content otherwise."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)


@dataclass
class HubCommit:
    sha: str
    files: dict[str, HubFile]
    title: str
    date: datetime


@dataclass
class HubRepo:
    repo_id: str
    gated: Literal[False, "auto", "manual"] = False
    private: bool = False
    disabled: bool = False
    commits: dict[str, HubCommit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    granted: set[str] = field(default_factory=set)
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


class FakeHub:
    """The Hub and its CDN (see the module docstring). Use as a context manager."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.renamed: dict[str, str] = {}
        self.tokens: set[str] = set()
        self.faults = Faults()
        self.requests: list[Recorded] = []
        self.tree_page_size = 1000
        self.cdn_url_ttl = 3600.0
        self._lock = threading.Lock()
        self._hub = Server("hub", self._route_hub, self.requests, self._lock)
        self._cdn = Server("cdn", self._route_cdn, self.requests, self._lock)
        self._blobs: dict[str, bytes] = {}

    # ------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        return self._hub.url

    @property
    def cdn_url(self) -> str:
        return self._cdn.url

    def __enter__(self) -> FakeHub:
        self._hub.start()
        self._cdn.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hub.stop()
        self._cdn.stop()

    # ------------------------------------------------------------ content

    def add_repo(
        self,
        repo_id: str,
        *,
        gated: Literal[False, "auto", "manual"] = False,
        private: bool = False,
        disabled: bool = False,
    ) -> HubRepo:
        with self._lock:
            repo = self.repos.get(repo_id)
            if repo is None:
                repo = HubRepo(repo_id, gated=gated, private=private, disabled=disabled)
                sha = hashlib.sha1(f"init {repo_id}".encode()).hexdigest()
                repo.commits[sha] = HubCommit(sha, {}, "initial commit", datetime.now(UTC))
                repo.refs["main"] = sha
                self.repos[repo_id] = repo
            else:
                repo.gated, repo.private, repo.disabled = gated, private, disabled
            return repo

    def add_file(
        self,
        repo_id: str,
        path: str,
        data: bytes,
        *,
        branch: str = "main",
        lfs: bool | None = None,
    ) -> str:
        """Commit ``data`` at ``path`` on ``branch`` (created from main if new); returns
        the new commit sha. ``lfs`` defaults to True except for text-like suffixes."""
        if repo_id not in self.repos:
            self.add_repo(repo_id)
        if lfs is None:
            lfs = not path.endswith(_TEXT_SUFFIXES)
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.refs.get(branch) or repo.refs["main"]
            files = dict(repo.commits[parent].files)
            files[path] = HubFile(data, lfs)
            sha = hashlib.sha1(
                f"{parent}\0{path}\0{hashlib.sha256(data).hexdigest()}".encode()
            ).hexdigest()
            repo.commits[sha] = HubCommit(sha, files, f"Upload {path}", datetime.now(UTC))
            repo.refs[branch] = sha
            self._blobs[hashlib.sha256(data).hexdigest()] = data
            return sha

    def set_ref(self, repo_id: str, name: str, commit: str) -> None:
        """Point a branch or tag at ``commit``."""
        with self._lock:
            repo = self.repos[repo_id]
            if commit not in repo.commits:
                raise KeyError(f"{repo_id} has no commit {commit}")
            repo.refs[name] = commit

    def commit_of(self, repo_id: str, ref: str = "main") -> str:
        return self.repos[repo_id].refs[ref]

    def add_token(self, token: str) -> None:
        self.tokens.add(token)

    def grant(self, repo_id: str, token: str) -> None:
        """``token``'s user accepted the terms of (or was invited to) ``repo_id``."""
        self.tokens.add(token)
        self.repos[repo_id].granted.add(token)

    def rename_repo(self, old: str, new: str) -> None:
        with self._lock:
            repo = self.repos.pop(old)
            repo.repo_id = new
            self.repos[new] = repo
            self.renamed[old] = new

    # ------------------------------------------------------------ helpers

    def _error(
        self,
        req: Request,
        status: int,
        code: str | None,
        message: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        req.send_json(status, {"error": message}, headers)

    def _split_repo(self, rest: str) -> tuple[str, str] | None:
        """(repo_id, remainder) for a raw path tail ``org/name/...`` or ``name/...``."""
        segments = rest.split("/")
        for n in (2, 1):
            if len(segments) >= n:
                candidate = "/".join(unquote(s) for s in segments[:n])
                if candidate in self.repos or candidate in self.renamed:
                    return candidate, "/".join(segments[n:])
        if len(segments) >= 2:
            return "/".join(unquote(s) for s in segments[:2]), "/".join(segments[2:])
        return None

    def _redirect_renamed(self, req: Request, repo_id: str, raw_path: str) -> bool:
        new = self.renamed.get(repo_id)
        if new is None:
            return False
        location = raw_path.replace(quote(repo_id), quote(new), 1)
        req.send(307, b"", {"Location": location})
        return True

    def _check_token(self, req: Request) -> bool:
        token = req.bearer
        if token is not None and token not in self.tokens:
            self._error(req, 401, None, "Invalid credentials in Authorization header")
            return False
        return True

    def _repo_or_error(self, req: Request, repo_id: str, *, files: bool) -> HubRepo | None:
        """The repo if this request may see it (``files``: file bytes, where gating bites)."""
        repo = self.repos.get(repo_id)
        token = req.bearer
        if repo is None or (repo.private and token not in repo.granted):
            self._error(req, 401 if token is None else 404, "RepoNotFound", "Repository not found")
            return None
        if repo.disabled:
            self._error(req, 403, None, "Access to this resource is disabled.")
            return None
        if files and repo.gated and token not in repo.granted:
            if token is None:
                self._error(
                    req,
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must be "
                    "authenticated to access it.",
                )
            else:
                self._error(
                    req,
                    403,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted and you are not in "
                    f"the authorized list. Visit {self.endpoint}/{repo_id} to ask "
                    "for access.",
                )
            return None
        return repo

    def _commit_or_error(self, req: Request, repo: HubRepo, rev: str) -> HubCommit | None:
        sha = repo.refs.get(rev, rev)
        commit = repo.commits.get(sha)
        if commit is None:
            self._error(req, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return commit

    def _cdn_location(self, repo_id: str, name: str, sha256: str) -> str:
        expires = int(time.time() + self.cdn_url_ttl)
        path = (
            f"/repos/{sha256[:2]}/{sha256[2:4]}/"
            f"{hashlib.sha256(repo_id.encode()).hexdigest()}/{sha256}"
        )
        signature = hmac.new(_SECRET, f"{path}{expires}".encode(), "sha256").hexdigest()
        disposition = f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\";"
        query = urlencode(
            {
                "response-content-disposition": disposition,
                "Expires": str(expires),
                "Policy": "eyJTdGF0ZW1lbnQiOltdfQ__",
                "Signature": signature,
                "Key-Pair-Id": "K3RPWS32NSSJCE",
            }
        )
        return f"{self.cdn_url}{path}?{query}"

    # ------------------------------------------------------------ hub routes

    def _route_hub(self, req: Request) -> None:
        path = req.path
        if path.startswith("/api/"):
            if fault_status(req, self.faults, "api"):
                return
            if not self._check_token(req):
                return
            if path.startswith("/api/models/"):
                self._route_api_models(req, path[len("/api/models/") :])
                return
            self._error(req, 404, None, "Sorry, we can't find the page you are looking for.")
            return
        if "/resolve/" in path and req.method in ("GET", "HEAD"):
            self._resolve(req)
            return
        self._error(req, 404, None, "Sorry, we can't find the page you are looking for.")

    def _resolve(self, req: Request) -> None:
        split = self._split_repo(req.path.lstrip("/"))
        if split is None or not split[1].startswith("resolve/"):
            self._error(req, 404, None, "Not found")
            return
        repo_id, rest = split
        if self._redirect_renamed(req, repo_id, req.path):
            return
        if fault_status(req, self.faults, "resolve"):
            return
        if not self._check_token(req):
            return
        _, raw_rev, *raw_file = rest.split("/")
        rev = unquote(raw_rev)
        file_path = "/".join(unquote(s) for s in raw_file)
        repo = self._repo_or_error(req, repo_id, files=True)
        if repo is None:
            return
        commit = self._commit_or_error(req, repo, rev)
        if commit is None:
            return
        entry = commit.files.get(file_path)
        if entry is None:
            self._error(req, 404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.sha})
            return
        if entry.lfs:
            location = self._cdn_location(repo_id, file_path.rsplit("/", 1)[-1], entry.sha256)
            body = f"Found. Redirecting to {location}".encode()
            req.send(
                302,
                body,
                {
                    "Location": location,
                    "X-Repo-Commit": commit.sha,
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(len(entry.data)),
                    "ETag": f'"{entry.oid}"',
                    "Accept-Ranges": "bytes",
                },
                content_type="text/plain; charset=utf-8",
            )
            return
        ctype = (
            "application/json; charset=utf-8"
            if file_path.endswith(".json")
            else "text/plain; charset=utf-8"
        )
        serve_bytes(
            req,
            entry.data,
            self.faults,
            {"ETag": f'"{entry.oid}"', "X-Repo-Commit": commit.sha},
            content_type=ctype,
        )

    def _route_api_models(self, req: Request, rest: str) -> None:
        split = self._split_repo(rest)
        if split is None:
            self._error(req, 404, "RepoNotFound", "Repository not found")
            return
        repo_id, tail = split
        if self._redirect_renamed(req, repo_id, req.path):
            return
        parts = tail.split("/") if tail else []
        kind = parts[0] if parts else ""
        if kind == "auth-check" and req.method == "GET":
            if self._repo_or_error(req, repo_id, files=True) is not None:
                req.send_json(200, {})
            return
        repo = self._repo_or_error(req, repo_id, files=False)
        if repo is None:
            return
        if kind in ("", "revision") and req.method == "GET":
            rev = unquote(parts[1]) if kind == "revision" and len(parts) > 1 else "main"
            commit = self._commit_or_error(req, repo, rev)
            if commit is not None:
                req.send_json(200, self._model_info(repo, commit, req))
            return
        if kind == "tree" and req.method == "GET" and len(parts) >= 2:
            commit = self._commit_or_error(req, repo, unquote(parts[1]))
            if commit is not None:
                self._tree(req, repo, commit, unquote("/".join(parts[2:])), unquote(parts[1]))
            return
        if kind == "paths-info" and req.method == "POST" and len(parts) >= 2:
            commit = self._commit_or_error(req, repo, unquote(parts[1]))
            if commit is not None:
                self._paths_info(req, commit)
            return
        self._error(req, 404, None, "Not found")

    def _model_info(self, repo: HubRepo, commit: HubCommit, req: Request) -> dict[str, Any]:
        blobs = req.param("blobs") == "true"
        siblings: list[dict[str, Any]] = []
        for path, f in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update({"size": len(f.data), "blobId": f.oid})
                if f.lfs:
                    sibling["lfs"] = {
                        "sha256": f.sha256,
                        "size": len(f.data),
                        "pointerSize": len(f.pointer),
                    }
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": commit.sha,
            "lastModified": commit.date.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "createdAt": repo.created.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "private": repo.private,
            "disabled": repo.disabled,
            "gated": repo.gated,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(len(f.data) for f in commit.files.values()),
        }
        expand = req.query.get("expand")
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        return info

    def _entry(self, path: str, f: HubFile, commit: HubCommit, expand: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.oid, "size": len(f.data), "path": path}
        if f.lfs:
            entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
        if expand:
            entry["lastCommit"] = {
                "id": commit.sha,
                "title": commit.title,
                "date": commit.date.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            }
            entry["securityFileStatus"] = {
                "status": "safe",
                "avScan": {"virusFound": False},
                "pickleImportScan": None,
            }
        return entry

    def _dir_entry(self, path: str) -> dict[str, Any]:
        return {"type": "directory", "oid": git_blob_sha1(path.encode()), "size": 0, "path": path}

    def _dirs(self, commit: HubCommit) -> set[str]:
        dirs: set[str] = set()
        for path in commit.files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        return dirs

    def _tree(self, req: Request, repo: HubRepo, commit: HubCommit, base: str, rev: str) -> None:
        recursive = req.param("recursive") == "true"
        expand = req.param("expand") == "true"
        dirs = self._dirs(commit)
        base = base.strip("/")
        if base and base not in dirs:
            self._error(req, 404, "EntryNotFound", f'{base} does not exist on "{rev}"')
            return
        prefix = base + "/" if base else ""
        entries: list[dict[str, Any]] = []
        for d in sorted(dirs):
            if d.startswith(prefix) and (recursive or "/" not in d[len(prefix) :]):
                entries.append(self._dir_entry(d))
        for path, f in sorted(commit.files.items()):
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :]):
                entries.append(self._entry(path, f, commit, expand))
        page = 50 if expand else self.tree_page_size
        cursor = int(req.param("cursor") or 0)
        chunk = entries[cursor : cursor + page]
        headers: dict[str, str] = {}
        if cursor + page < len(entries):
            query = urlencode(
                {
                    "recursive": str(recursive).lower(),
                    "expand": str(expand).lower(),
                    "cursor": cursor + page,
                }
            )
            tail = f"/{quote(base, safe='')}" if base else ""
            url = (
                f"{self.endpoint}/api/models/{repo.repo_id}/tree/{quote(rev, safe='')}"
                f"{tail}?{query}"
            )
            headers["Link"] = f'<{url}>; rel="next"'
        req.send_json(200, chunk, headers)

    def _paths_info(self, req: Request, commit: HubCommit) -> None:
        form = parse_qs(req.body.decode(), keep_blank_values=True)
        expand = (form.get("expand") or ["false"])[0] == "true"
        dirs = self._dirs(commit)
        out: list[dict[str, Any]] = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                out.append(self._entry(path, commit.files[path], commit, expand))
            elif path in dirs:
                out.append(self._dir_entry(path))
        req.send_json(200, out)

    # ------------------------------------------------------------ CDN

    def _route_cdn(self, req: Request) -> None:
        if refuse_storage_request(req):
            return
        expires = req.param("Expires") or "0"
        expected = hmac.new(_SECRET, f"{req.path}{expires}".encode(), "sha256").hexdigest()
        if not hmac.compare_digest(expected, req.param("Signature") or "") or (
            int(expires) < time.time()
        ):
            send_s3_error(req, 403, "AccessDenied", "Request has expired")
            return
        sha256 = req.path.rsplit("/", 1)[-1]
        data = self._blobs.get(sha256)
        if data is None:
            send_s3_error(req, 404, "NoSuchKey")
            return
        headers = {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}
        disposition = req.param("response-content-disposition")
        if disposition:
            headers["Content-Disposition"] = disposition
        serve_bytes(req, data, self.faults, headers)
