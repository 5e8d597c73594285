"""Which language the words are in: gettext catalogs (compiled from ``locales/*.po`` with Babel), the choice of
language (a setting, the browser's locale, ``LANG``), and numbers and dates written for that language.

Core text (the suggestion's reason, the model card, the HTML report, progress lines) calls ``_`` from here, which
reads the language active in this context (``using``); the UI and the CLI choose it. Nothing here imports streamlit.
"""

from __future__ import annotations

import contextlib
import gettext
import os
import tempfile
import unicodedata
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

DOMAIN = "lora_spectrum"
LOCALES = Path(__file__).parent / "locales"  # <code>/LC_MESSAGES/lora_spectrum.po, kept in the repo
LANGUAGES = ("en", "zh_CN")
CHOICES = ("auto", *LANGUAGES)  # the ``language`` setting; auto: the browser's language (UI), LANG (CLI)
NAMES = {"en": "English", "zh_CN": "简体中文"}  # each language in its own words, for the picker
ENV_VARS = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")  # gettext's order: the first one set wins


def N_(message: str) -> str:
    """Mark ``message`` for extraction without translating it now (it is translated where it is shown)."""
    return message


def match(tag: str | None) -> str:
    """The language we have for a locale tag (``zh-CN``, ``zh_Hans_CN``, ``zh_CN.UTF-8``, ``en-US``, ``C``):
    any Chinese gets Simplified Chinese (the only Chinese we have), anything else English."""
    if not tag:
        return "en"
    head = tag.split(":")[0].split(".")[0].split("@")[0].replace("-", "_")
    return "zh_CN" if head.lower().split("_")[0] == "zh" else "en"


def resolve(choice: str, browser: str | None = None) -> str:
    """The language to show: ``choice`` (en, zh_CN), or for ``auto`` the browser's locale tag."""
    return choice if choice in LANGUAGES else match(browser)


def from_environment(environ=None) -> str:
    """The CLI's language: the first of LANGUAGE, LC_ALL, LC_MESSAGES, LANG that is set; English without any."""
    env = os.environ if environ is None else environ
    for name in ENV_VARS:
        if env.get(name):
            return match(env[name])
    return "en"


def _compiled_root() -> Path:
    """Where the ``.mo`` files go: next to the ``.po`` files when that folder is writable (a checkout, an editable
    install), else a per-user cache folder (a read-only site-packages)."""
    if os.access(LOCALES, os.W_OK):
        return LOCALES
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lora_spectrum" / "locales"


def compile_catalogs(root: Path | None = None) -> Path:
    """Build each ``.mo`` from its ``.po`` with Babel where it is missing or older than the ``.po``; the root.

    This is ``pybabel compile -d lora_spectrum/locales -D lora_spectrum`` done at start-up, so that an install
    from the repo needs no build step. Fuzzy entries are left out, as pybabel does. Written atomically."""
    from babel.messages.mofile import write_mo  # lazy: only a first start (or a changed .po) compiles
    from babel.messages.pofile import read_po

    root = root or _compiled_root()
    for code in LANGUAGES:
        po = LOCALES / code / "LC_MESSAGES" / f"{DOMAIN}.po"
        mo = root / code / "LC_MESSAGES" / f"{DOMAIN}.mo"
        if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            continue
        mo.parent.mkdir(parents=True, exist_ok=True)
        with po.open("rb") as f:
            catalog = read_po(f, locale=code, domain=DOMAIN)
        with tempfile.NamedTemporaryFile("wb", dir=mo.parent, delete=False, suffix=".tmp") as out:
            write_mo(out, catalog, use_fuzzy=False)
        os.replace(out.name, mo)
    return root


@dataclass(frozen=True)
class Translator:
    """The words and formats of one language: ``gettext``/``pgettext`` over its catalog, ``number`` and ``date``
    written the way that language writes them (Babel's locale data)."""

    code: str
    catalog: gettext.NullTranslations

    def gettext(self, message: str) -> str:
        return self.catalog.gettext(message)

    def pgettext(self, context: str, message: str) -> str:
        """``message`` where the same English word means two things (``pgettext("LoRA", "rank")``)."""
        return self.catalog.pgettext(context, message)

    def number(self, value, digits: int = 3, fixed: bool = False) -> str:
        """``value`` with at most (``fixed``: exactly) ``digits`` decimals, thousands grouped as the locale groups
        them, with its decimal sign."""
        from babel.numbers import format_decimal

        decimals = ("0" if fixed else "#") * digits
        return format_decimal(value, format=f"#,##0.{decimals}" if digits else "#,##0", locale=self.code)

    def date(self, when: datetime | str) -> str:
        """A date and time (a ``datetime`` or an ISO 8601 string) in the locale's medium format."""
        from babel.dates import format_datetime

        return format_datetime(datetime.fromisoformat(when) if isinstance(when, str) else when, "medium",
                               locale=self.code)

    def error(self, exc: Exception) -> str:
        """An error as shown: in English its message; in another language its kind (``errors.py``'s ``kind`` of
        its class, translated) before the message, whose causes (a file, a library) are quoted as they are."""
        kind = getattr(type(exc), "kind", None)
        if self.code == "en" or not kind:
            return str(exc)
        return self.gettext("{kind}: {message}").format(kind=self.gettext(kind), message=exc)


@cache
def translator(code: str) -> Translator:
    """The translator of ``code`` (one of ``LANGUAGES``); catalogs are compiled on first use."""
    if code not in LANGUAGES:  # settings.py has already refused such a value with a ConfigError
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, not {code!r}")
    catalog = gettext.translation(DOMAIN, localedir=compile_catalogs(), languages=[code])
    return Translator(code, catalog)


_ACTIVE: ContextVar[Translator | None] = ContextVar("lora_spectrum_language", default=None)


def current() -> Translator:
    """The translator active in this context (``using``), English when none was chosen."""
    return _ACTIVE.get() or translator("en")


@contextlib.contextmanager
def using(tr: Translator):
    """Make ``tr`` the language of core text produced inside the block (this thread or task only)."""
    token = _ACTIVE.set(tr)
    try:
        yield tr
    finally:
        _ACTIVE.reset(token)


def width(text: str) -> int:
    """Terminal columns of ``text``: Chinese characters take two (hand-written: three lines, no dependency)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def pad(text: str, columns: int, right: bool = False) -> str:
    """``text`` padded with spaces to ``columns`` terminal columns (on the left when ``right``)."""
    fill = " " * max(columns - width(text), 0)
    return fill + text if right else text + fill


def _(message: str) -> str:
    """``message`` in the active language."""
    return current().gettext(message)


def pgettext(context: str, message: str) -> str:
    return current().pgettext(context, message)
