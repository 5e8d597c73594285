"""A small local HTTP server in the Hugging Face Hub's URL layout, for the download tests: huggingface_hub itself
talks to it (``endpoint=`` or ``HF_ENDPOINT``). It serves repos from folders, the model-info and tree calls, HEAD
and GET on ``/{repo}/resolve/{rev}/{path}`` with range requests, a gated repo, on request cuts one transfer off
halfway (to test the resume) or answers with a server error. Every request is logged, so a test can say what was
fetched. ``DeadEnds`` are the loopback ports of a hub that cannot be reached: one refuses, one never answers."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class Repo:
    def __init__(self, folder: Path, gated: bool = False):
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                      if p.is_file()}
        self.commit = hashlib.sha1(b"".join(self.files.values())).hexdigest()
        self.gated = gated


class HubServer:
    """``repos``: repo id -> ``Repo``. ``cut_once``: paths whose first GET sends half the bytes, then hangs up.
    ``slow``: seconds to wait between 64 KiB chunks (a transfer a test can cancel in the middle). ``fail_with``: a
    status (503) that every request gets once ``fail_after`` requests were answered as usual."""

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str, str]] = []  # (method, path, range header)
        self.cut_once: set[str] = set()
        self.slow = 0.0
        self.fail_with: int | None = None
        self.fail_after = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

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

    def _serve(self, h, body: bool) -> None:
        url = urlparse(h.path)
        path = unquote(url.path)
        self.log.append((h.command, path, h.headers.get("Range", "")))
        if self.fail_with is not None and len(self.log) > self.fail_after:
            return self._error(h, self.fail_with, "ServerError", "the hub is down")
        api = path.startswith("/api/models/")
        found = self._find(path[len("/api/models/"):] if api else path[1:])
        if found is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        repo_id, repo, rest = found
        if repo.gated and (api or "/resolve/" in path):
            return self._error(h, 403, "GatedRepo", f"Access to model {repo_id} is restricted")
        if api and (rest == "" or rest.startswith("revision/")):
            info = {"id": repo_id, "sha": repo.commit,
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

    def _json(self, h, data, body: bool) -> None:
        raw = json.dumps(data).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        h.end_headers()
        if body:
            h.wfile.write(raw)

    def _error(self, h, status: int, code: str, message: str) -> None:
        raw = json.dumps({"error": message}).encode()
        h.send_response(status)
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
