"""The command that brings a base onto the machine: ``fetch-base REPO_ID``. Parsing and printing only; the
download is ``downloads.fetch_base``, which the app's Download button calls too."""

from __future__ import annotations

import sys

from lora_spectrum.language import _

MB = 1024 * 1024


def add_parsers(sub) -> None:
    s = sub.add_parser("fetch-base", help="download a base (a diffusers repo on the Hugging Face Hub) into the local "
                                          "cache, showing its size first; resumes what an earlier fetch finished")
    s.add_argument("repo_id", help="e.g. Tongyi-MAI/Z-Image-Turbo or stabilityai/stable-diffusion-xl-base-1.0")
    s.add_argument("--cache-dir", help="the Hugging Face cache to fill (default: HF_HUB_CACHE, ~/.cache/huggingface)")
    s.add_argument("--endpoint", help="the hub to fetch from (default: HF_ENDPOINT, else https://huggingface.co); "
                                      "HF_HUB_ETAG_TIMEOUT sets how many seconds to wait for its answer")


def _cmd_fetch_base(args) -> int:
    """Exit 0 fetched (the snapshot folder on stdout), 2 gated, missing, or a hub that cannot be reached or fails
    (one line on stderr naming the repo and the endpoint: ``downloads._hub_errors``). An explicit command: it
    fetches whatever ``local_files_only`` says (that setting keeps the app offline)."""
    from lora_spectrum.bases.downloads import fetch_base, remote_base

    remote = remote_base(args.repo_id, endpoint=args.endpoint)
    print(_("{repo}: {n} files, {mb} MB (commit {commit})").format(
        repo=args.repo_id, n=len(remote.files), mb=f"{remote.nbytes / MB:.1f}", commit=remote.commit[:10]),
        file=sys.stderr, flush=True)

    def progress(done: int, total: int, rate: float) -> None:
        print(_("[fetch] {done} / {total} MB, {rate} MB/s").format(done=f"{done / MB:.1f}", total=f"{total / MB:.1f}",
                                                                   rate=f"{rate / MB:.1f}"), file=sys.stderr, flush=True)

    path = fetch_base(args.repo_id, cache_dir=args.cache_dir, endpoint=args.endpoint, progress=progress)
    print(path)
    return 0


COMMANDS = {"fetch-base": _cmd_fetch_base}
