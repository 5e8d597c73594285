"""Probe sets: named prompts that judge a LoRA's epochs, in three kinds (``style``: the trigger with subjects like
the training data; ``new_context``: the trigger with unseen subjects; ``leak``: no trigger), each set with seeds.

Read from ``configs/probes/<name>.yaml``, from the ``probes`` key of the settings, or from a kohya sd-scripts
``--sample_prompts`` text file; ``ProbeSet.resolve`` puts the trigger words in. Nothing here renders or touches
torch; the format is described in ``configs/probes/general.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from lora_spectrum.errors import ConfigError, shorten
from lora_spectrum.settings import CONFIG_DIR, PROJECT_ROOT, Settings

KINDS = ("style", "new_context", "leak")
PLACEHOLDER = "{trigger}"
PROBE_DIR = CONFIG_DIR / "probes"
DEFAULT_SEEDS = (1, 2, 3, 4)  # a kohya prompt line without --d
_SET_KEYS = ("name", "description", "seeds", *KINDS)
_INTS = ("width", "height", "steps", "seed")
_ENTRY_KEYS = ("prompt", "negative", *_INTS, "guidance", "variants")
_KOHYA_OPTIONS = {"n": "negative", "w": "width", "h": "height", "d": "seed", "s": "steps", "l": "guidance"}


@dataclass(frozen=True)
class ProbePrompt:
    """One prompt of a set; the optional values override the sampling defaults (``seed``: this prompt's only seed)."""

    text: str
    kind: str
    negative: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    variants: tuple[str, ...] = ()  # counterfactual prompts (no trigger) for prompt fidelity; made when empty

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"probe kind must be one of {', '.join(KINDS)}, not {self.kind!r}")


@dataclass(frozen=True)
class ResolvedProbe:
    """A probe ready to render: ``prompt`` is rendered; ``plain`` is the same prompt without the trigger (what the
    image is scored against for prompt fidelity)."""

    kind: str
    prompt: str
    plain: str
    seeds: tuple[int, ...]
    source_text: str
    negative: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    variants: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProbeSet:
    """A named set of probe prompts and the seeds each is rendered with. ``source``: where it was read from."""

    name: str
    prompts: tuple[ProbePrompt, ...]
    seeds: tuple[int, ...]
    description: str = ""
    source: str = ""

    def __post_init__(self):
        if not self.prompts or not self.seeds:
            raise ConfigError(f"probe set {self.name!r} needs at least one prompt and one seed")

    def resolve(self, trigger_words: Sequence[str] = ()) -> list[ResolvedProbe]:
        """The prompts with the trigger put in (style, new_context) or left out (leak). With no trigger words the
        prompts are rendered as written, ``{trigger}`` removed (the caller says so)."""
        words = [w.strip() for w in trigger_words if w and w.strip()]
        out = []
        for p in self.prompts:
            if p.kind == "leak" and PLACEHOLDER in p.text:
                raise ConfigError(f"probe set {self.name!r}: the leak prompt {p.text!r} has a {PLACEHOLDER} "
                                  "placeholder; leak prompts are rendered without the trigger")
            prompt, plain = (p.text.strip(), p.text.strip()) if p.kind == "leak" else _with_trigger(p.text, words)
            out.append(ResolvedProbe(p.kind, prompt, plain, (p.seed,) if p.seed is not None else self.seeds, p.text,
                                     p.negative, p.width, p.height, p.steps, p.guidance, p.variants))
        return out


def _tidy(text: str) -> str:
    """One space between words, no doubled or dangling commas."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,(?:\s*,)+", ",", text)
    return re.sub(r"\s+,", ",", text).strip(" ,")


def _word(word: str) -> str:
    return r"(?<!\w)" + re.escape(word) + r"(?!\w)"


def _has_trigger(text: str, words: Sequence[str]) -> bool:
    return any(re.search(_word(w), text, re.IGNORECASE) for w in words)


def _with_trigger(text: str, words: list[str]) -> tuple[str, str]:
    """(prompt, plain) of a style or new_context prompt."""
    plain = re.sub(r"\s*,?\s*" + re.escape(PLACEHOLDER), "", text)
    for w in words:  # a trigger already written in the text (a kohya import) goes, with the comma before it
        plain = re.sub(r"\s*,?\s*" + _word(w), "", plain, flags=re.IGNORECASE)
    plain = _tidy(plain)
    trigger = ", ".join(words)
    if PLACEHOLDER in text:
        return _tidy(text.replace(PLACEHOLDER, trigger)), plain
    if not words or _has_trigger(text, words):
        return text.strip(), plain
    return f"{text.strip()}, {trigger}", plain  # trigger last, as the demo's captions and many trainers write it


def _fail(source, cause: str):
    raise ConfigError(f"{source}: {cause}")


def _entry(value, kind: str, source) -> ProbePrompt:
    if isinstance(value, str):
        value = {"prompt": value}
    if not isinstance(value, dict):
        _fail(source, f"each {kind} entry must be a prompt or a mapping with a prompt, not {value!r}")
    unknown = sorted(set(map(str, value)) - set(_ENTRY_KEYS))
    if unknown:
        _fail(source, f"unknown key(s) {', '.join(unknown)} in a {kind} entry; allowed: {', '.join(_ENTRY_KEYS)}")
    text = value.get("prompt")
    if not isinstance(text, str) or not text.strip():
        _fail(source, f"a {kind} entry has no prompt text")
    for key in _INTS:
        v = value.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or (key != "seed" and v < 1)):
            _fail(source, f"{key} must be a positive whole number, not {v!r} (prompt {text!r})")
    g = value.get("guidance")
    if g is not None and (not isinstance(g, (int, float)) or isinstance(g, bool)):
        _fail(source, f"guidance must be a number, not {g!r} (prompt {text!r})")
    n = value.get("negative")
    if n is not None and not isinstance(n, str):
        _fail(source, f"negative must be text, not {n!r} (prompt {text!r})")
    v = value.get("variants", [])
    if not isinstance(v, list) or any(not isinstance(x, str) or not x.strip() for x in v):
        _fail(source, f"variants must be a list of prompts, not {v!r} (prompt {text!r})")
    if PLACEHOLDER in " ".join(v):
        _fail(source, f"variants are compared with the prompt without its trigger: no {PLACEHOLDER} in them "
                      f"(prompt {text!r})")
    return ProbePrompt(text.strip(), kind, n, *(value.get(k) for k in ("width", "height", "steps")),
                       None if g is None else float(g), value.get("seed"), tuple(x.strip() for x in v))


def probe_set_from_mapping(data, name: str, source) -> ProbeSet:
    """A set from a YAML file's mapping (or one ``probes`` entry of the settings); errors name ``source``."""
    if not isinstance(data, dict):
        _fail(source, "a probe set must be a mapping with seeds and style, new_context or leak prompts")
    unknown = sorted(set(map(str, data)) - set(_SET_KEYS))
    if unknown:
        _fail(source, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_SET_KEYS)}")
    name = data.get("name", name)
    if not isinstance(name, str) or not name.strip():
        _fail(source, f"name must be text, not {name!r}")
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        _fail(source, "seeds must be a non-empty list of whole numbers, e.g. seeds: [1, 2, 3, 4]")
    if any(not isinstance(s, int) or isinstance(s, bool) for s in seeds):
        _fail(source, f"seeds must be whole numbers, not {seeds!r}")
    prompts = []
    for kind in KINDS:
        if kind in data and (not isinstance(data[kind], list) or not data[kind]):
            _fail(source, f"{kind} must be a non-empty list of prompts")
        prompts += [_entry(v, kind, source) for v in data.get(kind) or ()]
    if not prompts:
        _fail(source, f"no prompts; give at least one of {', '.join(KINDS)}")
    for p in prompts:
        if p.kind == "leak" and PLACEHOLDER in p.text:
            _fail(source, f"the leak prompt {p.text!r} has a {PLACEHOLDER} placeholder; leak prompts have no trigger")
    description = data.get("description", "")
    if not isinstance(description, str):
        _fail(source, f"description must be text, not {description!r}")
    return ProbeSet(name.strip(), tuple(prompts), tuple(seeds), description, str(source))


def load_probe_file(path: str | Path) -> ProbeSet:
    """One set from a YAML file (``yaml.safe_load``); its name defaults to the file's stem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"{path}: probe set file not found") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(shorten(f"{path}: not valid YAML ({exc})", 300)) from exc
    return probe_set_from_mapping(data, path.stem, path)


def load_kohya_prompts(path: str | Path, trigger_words: Sequence[str] = ()) -> ProbeSet:
    """A kohya sd-scripts ``--sample_prompts`` text file: one prompt a line, ``#`` and blank lines skipped, options
    after `` --`` (``n`` negative, ``w`` width, ``h`` height, ``d`` seed, ``s`` steps, ``l`` CFG scale; others,
    like ``ss`` the sampler, ignored as kohya does). A line with a trigger word is ``style``, one without is
    ``leak``; with no trigger words known every line is ``style``. Seeds: the ``--d`` values when every line has
    one, else ``DEFAULT_SEEDS`` (a line's ``--d`` is its only seed)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError(f"{path}: prompt file not found") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text") from exc
    words = [w.strip() for w in trigger_words if w and w.strip()]
    prompts = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        text, *options = line.split(" --")
        values: dict = {}
        for option in options:
            key, _, value = option.strip().partition(" ")
            field_name, value = _KOHYA_OPTIONS.get(key.lower()), value.strip()
            if field_name is None or not value:
                continue
            try:
                values[field_name] = value if field_name == "negative" else (
                    float(value) if field_name == "guidance" else int(value))
            except ValueError:
                _fail(f"{path}, line {number}", f"--{key} needs a number, not {value!r}")
            if field_name in ("width", "height", "steps") and values[field_name] < 1:
                _fail(f"{path}, line {number}", f"--{key} must be at least 1, not {value}")
        kind = "style" if not words or _has_trigger(text, words) else "leak"
        prompts.append(ProbePrompt(text.strip(), kind, **values))
    if not prompts:
        _fail(path, "no prompt lines")
    given = tuple(dict.fromkeys(p.seed for p in prompts))
    seeds = DEFAULT_SEEDS if None in given else given
    return ProbeSet(path.stem, tuple(prompts), seeds, f"kohya sample prompts from {path.name}", str(path))


def probe_sets(settings: Settings | None = None, folder: str | Path = PROBE_DIR) -> dict[str, ProbeSet]:
    """Every YAML set in ``folder`` and the settings' ``probes`` sets (these win over a file set of their name)."""
    sets: dict[str, ProbeSet] = {}
    folder = Path(folder)
    files = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]) if folder.is_dir() else []
    for path in files:
        found = load_probe_file(path)
        if found.name in sets:
            _fail(path, f"probe set {found.name!r} is also defined in {sets[found.name].source}")
        sets[found.name] = found
    for name, data in (settings.probes if settings else {}).items():
        if isinstance(data, dict) and "name" in data:
            _fail(f"settings probes.{name}", "unknown key(s) name; the set's name is its key under probes")
        sets[str(name)] = probe_set_from_mapping(data, str(name), f"settings probes.{name}")
    return sets


def find_probe_set(choice: str | None, settings: Settings | None = None, *, demo: bool = False,
                   trigger_words: Sequence[str] = (), folder: str | Path = PROBE_DIR) -> ProbeSet:
    """The set ``choice`` names, or the ``.yaml``/``.yml`` set or kohya ``.txt`` file it points to (a relative
    path: from the working folder, else the project root). ``None``, ``""`` or ``"auto"``: the settings'
    ``probe_set``, else ``shapes`` for the demo and ``general`` otherwise."""
    if choice in (None, "", "auto"):
        configured = settings.probe_set if settings else ""
        choice = configured if configured not in ("", "auto") else ("shapes" if demo else "general")
    if choice.lower().endswith((".yaml", ".yml", ".txt")):
        path = Path(choice).expanduser()
        if not path.is_absolute() and not path.exists():
            path = (settings.root if settings else PROJECT_ROOT) / path
        if path.suffix.lower() == ".txt":
            return load_kohya_prompts(path, trigger_words)
        return load_probe_file(path)
    sets = probe_sets(settings, folder)
    if choice not in sets:
        known = ", ".join(sorted(sets)) or "none"
        raise ConfigError(f"unknown probe set {choice!r}; known: {known} (or a .yaml or kohya .txt file)")
    return sets[choice]
