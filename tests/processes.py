"""Several real Python processes started together, for the tests of files more than one process writes (votes,
History, releases)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def together(script: str, runs: list[list[str]], hold=None, timeout: float = 60) -> list[subprocess.CompletedProcess]:
    """Start one Python process per ``runs`` entry (its arguments); once every one has said ``ready``, let them
    all go at once (``hold()``, when given, runs before they finish); their exit codes and output."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in runs]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.close()
        if hold:
            hold()
        outs = [(p.stdout.read(), p.stderr.read(), p.wait(timeout)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [subprocess.CompletedProcess(p.args, rc, out, err) for p, (out, err, rc) in zip(procs, outs, strict=True)]
