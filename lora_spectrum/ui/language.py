"""The session's language: the sidebar's picker, ``_`` for the views' words, and ``active()`` around calls into
the core that write text (the suggestion, the model card, the report, progress lines).

The choice lives in ``st.session_state`` (it lasts for the session); ``auto`` follows the browser's language
(``st.context.locale``). Option values and widget keys never change with the language: only what is shown does.
"""

from __future__ import annotations

import streamlit as st

from lora_spectrum import language
from lora_spectrum.errors import LoraSpectrumError
from lora_spectrum.render.plan import column_label
from lora_spectrum.ui.state import LANGUAGE


def code() -> str:
    """The language this session sees: its choice, else the configured one, resolved against the browser's."""
    return language.resolve(st.session_state.get(LANGUAGE, "auto"), st.context.locale)


def translator() -> language.Translator:
    return language.translator(code())


def _(message: str) -> str:
    """``message`` in the session's language."""
    return translator().gettext(message)


def pgettext(context: str, message: str) -> str:
    return translator().pgettext(context, message)


def active():
    """A context in which core code writes its text in the session's language."""
    return language.using(translator())


def error_text(exc: LoraSpectrumError) -> str:
    """An error as shown: its translated kind first (the cause itself comes from the file or library, as is)."""
    return translator().error(exc)


def language_picker(configured: str) -> None:
    """The sidebar's language picker, starting at the configured language (``auto``, ``en`` or ``zh_CN``)."""
    st.session_state.setdefault(LANGUAGE, configured)
    browser = language.NAMES[language.match(st.context.locale)]
    names = {"auto": _("Auto ({language})").format(language=browser), **language.NAMES}
    st.sidebar.selectbox("Language · 语言", language.CHOICES, key=LANGUAGE, format_func=names.__getitem__,
                         help=_("the language of this workbench for you; file names, prompts and metadata "
                                "are shown as they are"))


def column_name(entry) -> str:
    """A column's name as this session reads it: the base, or an epoch file's ``epoch 20`` / ``step 250`` label
    (stored and drawn in English: ``plan.column_label``)."""
    return column_label(entry, translate=_)
