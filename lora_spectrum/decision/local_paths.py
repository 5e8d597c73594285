"""Local paths out of a trainer's metadata before it is published: a release (its header and its card) never tells
where files lived on the trainer's machine. Each absolute path (POSIX, ``~/``, Windows) becomes its last part, as
kohya itself writes ``ss_sd_model_name`` and its dataset folders; inside a JSON value (ai-toolkit's config, kohya's
``ss_datasets``) every string is treated alike. Plain string work; reads and writes no file."""

from __future__ import annotations

import json
import re

# A path inside free text: a root (/, ~/, C:\) then at least one more separator, no spaces (a path with spaces is
# only recognised as a whole value). Not after a word character, a dot, a colon or a slash, so "1/2", "w/o", URLs
# ("https://host/x") and relative paths stay as they are.
_SEG = r"[^\s\"'`<>|;,*?/\\]+"
_IN_TEXT = re.compile(rf"(?<![\w.:/\\-])(?:(?:~|/{_SEG})|[A-Za-z]:)(?:[\\/]{_SEG})+[\\/]?")
_WHOLE = re.compile(r"^(?:~[\\/]|/[^/]|[A-Za-z]:[\\/]|\\\\)")


def without_local_paths(metadata: dict[str, str]) -> tuple[dict[str, str], int]:
    """``metadata`` with every local path shortened to its last part, and how many were."""
    out, count = {}, 0
    for key, value in metadata.items():
        out[key], n = _scrub_value(str(value))
        count += n
    return out, count


def _scrub_value(raw: str) -> tuple[str, int]:
    if raw[:1] in "{[":
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if isinstance(data, (dict, list)):
            clean, n = _scrub_json(data)
            return (json.dumps(clean, ensure_ascii=False), n) if n else (raw, 0)
    return _scrub_text(raw)


def _scrub_json(data):
    if isinstance(data, dict):
        out, total = {}, 0
        for k, v in data.items():
            key, n1 = _scrub_text(k) if isinstance(k, str) else (k, 0)
            out[key], n2 = _scrub_json(v)
            total += n1 + n2
        return out, total
    if isinstance(data, list):
        pairs = [_scrub_json(v) for v in data]
        return [v for v, _n in pairs], sum(n for _v, n in pairs)
    if isinstance(data, str):
        return _scrub_text(data)
    return data, 0


def _scrub_text(value: str) -> tuple[str, int]:
    stripped = value.strip()
    if _WHOLE.match(stripped) and "\n" not in stripped:  # the whole value is one path, spaces and all
        return last_part(stripped), 1
    return _IN_TEXT.subn(lambda m: last_part(m.group(0)), value)


def last_part(path: str) -> str:
    """The last part of a path (``/a/b/`` -> ``b``); the path itself when it has none."""
    return re.split(r"[\\/]", path.rstrip("/\\"))[-1] or path
