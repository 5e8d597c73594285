"""A small local HTTP server in the Hugging Face Hub's URL layout, for the download and push tests: huggingface_hub
itself talks to it (``endpoint=`` or ``HF_ENDPOINT``). It serves repos from folders, the model-info and tree calls,
HEAD and GET on ``/{repo}/resolve/{rev}/{path}`` with range requests, a gated repo, on request cuts one transfer off
halfway (to test the resume) or answers with a server error. Every request is logged, so a test can say what was
fetched. ``DeadEnds`` are the loopback ports of a hub that cannot be reached: one refuses, one never answers.

Uploads, as ``HfApi.create_repo`` and ``HfApi.create_commit`` / ``upload_folder`` make them (huggingface_hub 2.x):
``POST /api/repos/create``, ``POST /api/validate-yaml`` (the README's front matter), ``POST
/api/models/{repo}/preupload/{rev}`` (answered ``uploadMode: regular`` for every file, so no LFS or Xet upload is
ever tried) and ``POST /api/models/{repo}/commit/{rev}`` (its ndjson body: a ``header`` line, then ``file`` lines
with base64 content). Writes need the one ``token`` (a bearer token; 401 without it, as the hub answers), a repo in
``forbidden`` or a gated one may not be written (403), a private repo is hidden from whoever lacks the token (404).
A committed file is served again by the resolve and info calls."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import yaml


class Repo:
    """A repo's files (path -> bytes) at its one commit: those of ``folder``, or none (a repo just created)."""

    def __init__(self, folder: Path | None = None, gated: bool = False, private: bool = False):
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                      if p.is_file()} if folder is not None else {}
        self.commit = hashlib.sha1(b"".join(self.files.values())).hexdigest()
        self.gated = gated
        self.private = private


def git_oid(data: bytes) -> str:
    """A file's id as git (and the hub, for files not in LFS) names it: sha1 of ``blob <size>\\0`` and the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """``repos``: repo id -> ``Repo``. ``cut_once``: paths whose first GET sends half the bytes, then hangs up.
    ``slow``: seconds to wait between 64 KiB chunks (a transfer a test can cancel in the middle). ``fail_with``: a
    status (503) that every request gets once ``fail_after`` requests were answered as usual.

    Uploads: ``token``, the one bearer token the hub accepts (writes need it; None: every write is 401); ``user``,
    the namespace of a repo created without one; ``forbidden``, repo ids the token may not write (403);
    ``fail_commit``, a status (500) the commit call answers with. ``commits``: (repo id, summary, paths) of each
    commit made."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str, str]] = []  # (method, path, range header)
        self.cut_once: set[str] = set()
        self.slow = 0.0
        self.fail_with: int | None = None
        self.fail_after = 0
        self.token: str | None = None
        self.user = "tester"
        self.forbidden: set[str] = set()
        self.fail_commit: int | None = None
        self.commits: list[tuple[str, str, list[str]]] = []
        self._lock = threading.Lock()  # the handler runs a thread per connection
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

            def do_POST(self):
                hub._post(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, suffix: str) -> list[str]:
        """The range headers of every GET of a file whose path ends with ``suffix``."""
        return [rng for method, path, rng in self.log if method == "GET" and path.endswith(suffix)]

    # ------------------------------------------------------------------ routes
    def _find(self, rest: str) -> tuple[str, Repo, str] | None:
        for repo_id, repo in self.repos.items():
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return repo_id, repo, rest[len(repo_id) + 1:]
        return None

    def _authorized(self, h) -> bool:
        return self.token is not None and h.headers.get("Authorization") == f"Bearer {self.token}"

    def _refused(self, h) -> bool:
        """Answered 401, as the hub answers a token it does not know (any request that sends one)."""
        if h.headers.get("Authorization") and not self._authorized(h):
            self._error(h, 401, "", "Invalid credentials in Authorization header")
            return True
        return False

    def _serve(self, h, body: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        self.log.append((h.command, path, h.headers.get("Range", "")))
        if self.fail_with is not None and len(self.log) > self.fail_after:
            return self._error(h, self.fail_with, "ServerError", "the hub is down")
        if self._refused(h):
            return None
        api = path.startswith("/api/models/")
        found = self._find(path[len("/api/models/"):] if api else path[1:])
        if found is None or (found[1].private and not self._authorized(h)):
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        repo_id, repo, rest = found
        if repo.gated and (api or "/resolve/" in path):
            return self._error(h, 403, "GatedRepo", f"Access to model {repo_id} is restricted")
        if api and (rest == "" or rest.startswith("revision/")):
            info = {"id": repo_id, "sha": repo.commit, "private": repo.private,
                    "siblings": [{"rfilename": f, "size": len(b)} for f, b in repo.files.items()]}
            return self._json(h, info, body)
        if api and rest.startswith("tree/"):
            tree = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for f, b in repo.files.items()]
            return self._json(h, tree, body)
        if rest.startswith("resolve/"):
            file = rest.split("/", 2)[2]
            if file not in repo.files:
                return self._error(h, 404, "EntryNotFound", f"{file} not found")
            return self._file(h, repo, file, body)
        return self._error(h, 404, "EntryNotFound", "no such route")

    # ------------------------------------------------------------------ uploads
    def _post(self, h) -> None:
        path = unquote(urlparse(h.path).path)
        raw = _read_body(h)
        self.log.append((h.command, path, ""))
        if self.fail_with is not None and len(self.log) > self.fail_after:
            return self._error(h, self.fail_with, "ServerError", "the hub is down")
        if path == "/api/validate-yaml":  # huggingface_hub checks the README's front matter before it uploads
            return self._validate_yaml(h, json.loads(raw))
        if not self._authorized(h):
            return self._error(h, 401, "", "Invalid credentials in Authorization header" if
                               h.headers.get("Authorization") else "Invalid username or password.")
        if path == "/api/repos/create":
            return self._create(h, json.loads(raw))
        found = self._find(path[len("/api/models/"):]) if path.startswith("/api/models/") else None
        if found is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        repo_id, repo, rest = found
        if repo_id in self.forbidden or repo.gated:
            return self._error(h, 403, "", f"You don't have the rights to write to {repo_id}")
        if rest.startswith("preupload/"):
            files = json.loads(raw)["files"]
            return self._json(h, {"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                 "oid": git_oid(repo.files[f["path"]]) if f["path"] in repo.files else None} for f in files]}, True)
        if rest.startswith("commit/"):
            if self.fail_commit is not None:
                return self._error(h, self.fail_commit, "ServerError", "the commit failed")
            return self._commit(h, repo_id, repo, [json.loads(line) for line in raw.splitlines() if line.strip()])
        return self._error(h, 404, "EntryNotFound", "no such route")

    def _validate_yaml(self, h, payload: dict) -> None:
        content = payload.get("content", "")
        try:
            if content.startswith("---\n"):
                yaml.safe_load(content[4:content.index("\n---\n", 3)])
        except (ValueError, yaml.YAMLError) as exc:
            raw = json.dumps({"errors": [{"message": str(exc)}], "warnings": []}).encode()
            return self._send(h, 400, raw)
        return self._json(h, {"errors": [], "warnings": []}, True)

    def _create(self, h, payload: dict) -> None:
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        with self._lock:
            exists = repo_id in self.repos
            if repo_id in self.forbidden or (exists and self.repos[repo_id].gated):
                return self._error(h, 403, "", "You don't have the rights to create a model under this namespace")
            if exists:  # huggingface_hub's create_repo(exist_ok=True) reads the url from this answer
                return self._error(h, 409, "", "You already created this model repo", url=f"{self.url}/{repo_id}")
            self.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
        return self._json(h, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}, True)

    def _commit(self, h, repo_id: str, repo: Repo, lines: list[dict]) -> None:
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        files = {}
        for line in lines:
            if line.get("key") == "lfsFile":
                return self._error(h, 400, "", "this hub takes every file inline (preupload said regular)")
            if line.get("key") == "file":
                value = line["value"]
                files[value["path"]] = base64.b64decode(value["content"])
        with self._lock:
            repo.files.update(files)
            repo.commit = hashlib.sha1(repo.commit.encode() + json.dumps(sorted(files)).encode()
                                       + b"".join(files.values())).hexdigest()
            self.commits.append((repo_id, header.get("summary", ""), sorted(files)))
        return self._json(h, {"commitUrl": f"{self.url}/{repo_id}/commit/{repo.commit}",
                              "commitOid": repo.commit, "success": True}, True)

    def _send(self, h, status: int, raw: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        h.wfile.write(raw)

    def _json(self, h, data, body: bool) -> None:
        raw = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        if body:
            h.wfile.write(raw)

    def _error(self, h, status: int, code: str, message: str, **more) -> None:
        raw = json.dumps({"error": message, **more}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(raw)

    def _file(self, h, repo: Repo, file: str, body: bool) -> None:
        data = repo.files[file]
        start = 0
        rng = h.headers.get("Range", "")
        if rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0])
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", repo.commit)
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("Content-Length", str(len(data) - start))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return
        chunk = data[start:]
        if file in self.cut_once:  # half the bytes, then the connection drops
            self.cut_once.discard(file)
            h.wfile.write(chunk[: len(chunk) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        for i in range(0, len(chunk), 65536):
            h.wfile.write(chunk[i:i + 65536])
            if self.slow:
                h.wfile.flush()
                threading.Event().wait(self.slow)


def _read_body(h) -> bytes:
    """A request's body, by its Content-Length or in chunks (``Transfer-Encoding: chunked``)."""
    if h.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))
    out = b""
    while size := int(h.rfile.readline().split(b";")[0].strip() or b"0", 16):
        out += h.rfile.read(size)
        h.rfile.readline()
    while h.rfile.readline().strip():  # trailers, then the empty line
        pass
    return out


class DeadEnds:
    """Two loopback ports a hub client cannot get an answer from: ``refused_url`` (a port bound but not listening:
    every connection is refused) and ``silent_url`` (a port listening that never answers: the kernel accepts the
    connection, nobody reads the request, the client times out). Nothing runs; ``close()`` frees both."""

    def __init__(self):
        self._refusing = socket.socket()
        self._refusing.bind(("127.0.0.1", 0))
        self._silent = socket.socket()
        self._silent.bind(("127.0.0.1", 0))
        self._silent.listen(64)
        self.refused_url = f"http://127.0.0.1:{self._refusing.getsockname()[1]}"
        self.silent_url = f"http://127.0.0.1:{self._silent.getsockname()[1]}"

    def close(self):
        self._refusing.close()
        self._silent.close()
