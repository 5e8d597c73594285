"""The message catalogs and the choice of language: every string the code marks has its Chinese, placeholders
survive translation, the catalogs compile with Babel, and the language follows the setting, the browser or LANG."""

from __future__ import annotations

import ast
import gettext
import io
import json
import re
import string
import subprocess
import sys
import tokenize
from datetime import datetime
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from lora_spectrum import language
from lora_spectrum.errors import LoraLoadError, PlanError
from lora_spectrum.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
PO = {code: language.LOCALES / code / "LC_MESSAGES" / f"{language.DOMAIN}.po" for code in language.LANGUAGES}


def extracted() -> dict[tuple[str, str | None], str]:
    """Every message the code marks (``_``, ``N_``, ``ngettext``, ``pgettext``), as ``babel.cfg`` tells pybabel to
    find them: (msgid, context) -> the file it is in."""
    with (ROOT / "babel.cfg").open(encoding="utf-8") as f:
        method_map, options_map = parse_mapping_cfg(f)
    found = {}
    for filename, _lineno, message, _comments, context in extract_from_dir(str(ROOT), method_map, options_map):
        msgid = message[0] if isinstance(message, tuple) else message
        if msgid:
            found.setdefault((msgid, context), filename)
    return found


def catalog(code: str):
    with PO[code].open("rb") as f:
        return read_po(f, locale=code)


def fields(text: str) -> set[str]:
    return {name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name is not None}


def test_no_translatable_string_hides_inside_an_f_string():
    """On Python 3.11 an f-string is one token: pybabel cannot see a ``_()`` inside it, so its words would never
    reach the catalog (and be shown in English)."""
    marked = re.compile(r"\b(_|N_|ngettext)\(")
    hidden = []
    for path in [ROOT / "app.py", *sorted((ROOT / "lora_spectrum").rglob("*.py"))]:
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
            prefix = re.match(r"[A-Za-z]*", tok.string).group(0).lower() if tok.type == tokenize.STRING else ""
            if "f" in prefix and marked.search(tok.string):
                hidden.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: {tok.string[:60]}")
    assert not hidden, "take these _() calls out of their f-strings:\n" + "\n".join(hidden)


def test_no_module_that_translates_binds_the_name_underscore():
    """``for _ in ...`` (or ``a, _ = ...``) in a module that imports ``_`` would make ``_`` local to its function:
    a translation there then fails (``UnboundLocalError``), or silently uses the throwaway value."""
    bound = []
    for path in [ROOT / "app.py", *sorted((ROOT / "lora_spectrum").rglob("*.py"))]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not any(isinstance(n, ast.ImportFrom) and any(a.name == "_" for a in n.names) for n in ast.walk(tree)):
            continue
        for n in ast.walk(tree):
            if (isinstance(n, ast.Name) and n.id == "_" and isinstance(n.ctx, ast.Store)) or \
                    (isinstance(n, ast.arg) and n.arg == "_"):
                bound.append(f"{path.relative_to(ROOT)}:{n.lineno}")
    assert not bound, "rename these throwaway _ (e.g. _unused):\n" + "\n".join(bound)


def test_the_code_marks_the_strings_of_every_view_and_of_the_core():
    found = extracted()
    files = {Path(f).as_posix() for f in found.values()}
    for module in ("app.py", "lora_spectrum/ui/compare.py", "lora_spectrum/ui/rank.py", "lora_spectrum/ui/insight.py",
                   "lora_spectrum/ui/history.py", "lora_spectrum/ui/inspector.py", "lora_spectrum/ui/ship.py",
                   "lora_spectrum/ui/probe.py", "lora_spectrum/ui/base_picker.py", "lora_spectrum/ui/controls.py",
                   "lora_spectrum/measures/verdict_reason.py", "lora_spectrum/decision/model_card.py",
                   "lora_spectrum/decision/html_report.py", "lora_spectrum/errors.py"):
        assert module in files, f"no translatable string found in {module}"
    assert ("Render", None) in found and ("Epochs to compare", None) in found and ("rank", "LoRA") in found


def test_every_marked_string_has_a_chinese_translation():
    zh = catalog("zh_CN")
    missing = []
    for (msgid, context), where in sorted(extracted().items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        m = zh.get(msgid, context=context)
        strings = (m.string if isinstance(m.string, tuple) else (m.string,)) if m is not None else ()
        if not strings or not all(strings) or m.fuzzy:
            missing.append(f"{msgid!r}{f' (context {context})' if context else ''} in {where}")
    assert not missing, ("untranslated in lora_spectrum/locales/zh_CN (run scripts/messages.sh, then write the "
                         "Chinese):\n  " + "\n  ".join(missing))


@pytest.mark.parametrize("code", language.LANGUAGES)
def test_the_catalogs_hold_no_message_the_code_no_longer_has(code):
    found = extracted()
    gone = sorted(m.id if isinstance(m.id, str) else m.id[0] for m in catalog(code) if m.id
                  and ((m.id if isinstance(m.id, str) else m.id[0]), m.context) not in found)
    assert not gone, f"{PO[code].name} ({code}) keeps messages the code dropped: {gone[:10]} (run scripts/messages.sh)"


def test_placeholders_survive_translation():
    bad = []
    for m in catalog("zh_CN"):
        if not m.id:
            continue
        ids = m.id if isinstance(m.id, tuple) else (m.id,)
        strs = m.string if isinstance(m.string, tuple) else (m.string,)
        for s in strs:
            if s and fields(s) != fields(ids[0]):
                bad.append(f"{ids[0]!r}: {sorted(fields(ids[0]))} became {sorted(fields(s))}")
            if s:
                s.format(**{name: "x" for name in fields(s)})  # a stray brace raises here
    assert not bad, "\n".join(bad)


def test_file_placeholders_come_through_in_chinese():
    zh = language.translator("zh_CN")
    text = zh.gettext("skipped {file}: {reason}").format(file="jimeng_200.safetensors", reason="not a LoRA")
    assert "jimeng_200.safetensors" in text and "not a LoRA" in text and not text.startswith("skipped")
    epoch = zh.gettext("epoch {epoch}").format(epoch=120)
    assert "120" in epoch and "epoch" not in epoch


def test_catalogs_compile_with_babel_and_gettext_reads_them(tmp_path):
    root = language.compile_catalogs(tmp_path)
    zh = gettext.translation(language.DOMAIN, localedir=root, languages=["zh_CN"])
    assert zh.gettext("Render") == catalog("zh_CN")["Render"].string != "Render"
    en = gettext.translation(language.DOMAIN, localedir=root, languages=["en"])
    assert en.gettext("Render") == "Render"
    mo = root / "zh_CN" / "LC_MESSAGES" / f"{language.DOMAIN}.mo"
    before = mo.stat().st_mtime_ns
    language.compile_catalogs(tmp_path)  # up to date: not written again
    assert mo.stat().st_mtime_ns == before


def test_compiled_catalogs_are_not_kept_in_the_repository():
    tracked = subprocess.run(["git", "ls-files", "lora_spectrum/locales"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    assert any(p.endswith("zh_CN/LC_MESSAGES/lora_spectrum.po") for p in tracked) or not tracked
    assert not [p for p in tracked if p.endswith(".mo")]


@pytest.mark.parametrize(("tag", "code"), [
    ("zh-CN", "zh_CN"), ("zh", "zh_CN"), ("zh-Hans-CN", "zh_CN"), ("zh-TW", "zh_CN"), ("zh_CN.UTF-8", "zh_CN"),
    ("en-US", "en"), ("de-DE", "en"), ("C", "en"), ("POSIX", "en"), ("", "en"), (None, "en")])
def test_a_locale_tag_gets_the_language_we_have(tag, code):
    assert language.match(tag) == code


def test_auto_follows_the_browser_and_a_choice_wins():
    assert language.resolve("auto", "zh-CN") == "zh_CN"
    assert language.resolve("auto", "fr-FR") == "en"
    assert language.resolve("en", "zh-CN") == "en"
    assert language.resolve("zh_CN", "en-US") == "zh_CN"


def test_the_cli_language_follows_gettexts_environment_order():
    assert language.from_environment({}) == "en"
    assert language.from_environment({"LANG": "zh_CN.UTF-8"}) == "zh_CN"
    assert language.from_environment({"LANG": "zh_CN.UTF-8", "LC_MESSAGES": "C"}) == "en"
    assert language.from_environment({"LC_ALL": "zh_CN.UTF-8", "LANG": "en_US.UTF-8"}) == "zh_CN"
    assert language.from_environment({"LANGUAGE": "en", "LC_ALL": "zh_CN.UTF-8"}) == "en"


def test_numbers_and_dates_are_written_for_the_locale():
    en, zh = language.translator("en"), language.translator("zh_CN")
    assert en.number(1234567.891) == "1,234,567.891" and zh.number(0.5) == "0.5"
    when = datetime(2026, 12, 4, 15, 30)
    assert "Dec" in en.date(when) and "2026" in en.date(when)
    assert "2026年12月4日" in zh.date(when) and zh.date(when.isoformat()) == zh.date(when)


def test_an_error_in_chinese_names_its_kind_and_keeps_the_file_and_cause_as_they_are():
    exc = LoraLoadError("loras/jimeng_20.safetensors", "not a safetensors file")
    zh = language.translator("zh_CN").error(exc)
    assert zh.startswith(language.translator("zh_CN").gettext(LoraLoadError.kind))
    assert "loras/jimeng_20.safetensors" in zh and "not a safetensors file" in zh
    assert language.translator("en").error(PlanError("give at least one seed")) == "give at least one seed"


def test_core_text_follows_the_active_language_and_english_is_the_default():
    assert language._("Render") == "Render"
    with language.using(language.translator("zh_CN")):
        assert language._("Render") == catalog("zh_CN")["Render"].string
    assert language.current().code == "en"


def test_the_language_setting_is_checked(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("language: zh_CN\n", encoding="utf-8")
    bad.write_text("language: fr\n", encoding="utf-8")
    assert load_settings(good).language == "zh_CN" and load_settings().language == "auto"
    with pytest.raises(Exception, match="language must be auto, en, zh_CN, not 'fr'"):
        load_settings(bad)


def test_the_cli_speaks_chinese_under_lang_and_its_json_keys_do_not_change(tmp_path):
    empty = tmp_path / "loras"
    empty.mkdir()

    def cli(lang: str, *args: str) -> str:
        env = {"PATH": "/usr/bin:/bin", "LANG": lang, "HOME": str(tmp_path)}
        return subprocess.run([sys.executable, "-m", "lora_spectrum", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, check=True).stdout

    assert cli("C.UTF-8", "inspect", "--loras", str(empty)).strip().endswith(f"(no LoRA files in {empty})")
    zh = cli("zh_CN.UTF-8", "inspect", "--loras", str(empty))
    words = language.translator("zh_CN")
    head, last = zh.strip().splitlines()
    assert last == words.gettext("(no LoRA files in {folder})").format(folder=empty)
    assert head.split()[:2] == [words.gettext("file"), words.gettext("series")] and "no LoRA files" not in zh
    for lang in ("C.UTF-8", "zh_CN.UTF-8"):  # JSON: the same keys (and values) in every language
        assert json.loads(cli(lang, "inspect", "--loras", str(empty), "--json")) == []
