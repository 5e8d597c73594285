"""The operator in the page: the sidebar's Operator box (the token's password box, Streamlit's login), ``access`` and
``is_operator`` for the views, and the one sentence a viewer gets for an operator action (a disabled button's help,
or a warning if a click arrives anyway). The rule itself is ``lora_spectrum.access``; the token is read fresh on
every call and a session keeps only its digest, in ``st.session_state``."""

from __future__ import annotations

import streamlit as st

from lora_spectrum import access as rule
from lora_spectrum.errors import ConfigError
from lora_spectrum.ui.language import _, error_text
from lora_spectrum.ui.text import md_escape

TYPED = "operator_digest"  # the SHA-256 of the right token, once this session typed it (never the token)
BOX = "operator_token"  # the password box; emptied as soon as it is read
WRONG = "operator_wrong"  # the last token typed here was not the operator's: said once


def _identity() -> rule.Identity:
    """This session's login: ``is_logged_in`` is there only when an identity provider is configured."""
    info = st.user.to_dict()
    return rule.Identity(provider="is_logged_in" in info, logged_in=info.get("is_logged_in") is True,
                         email=str(info.get("email") or ""), verified=info.get("email_verified") is not False)


def _token(settings) -> tuple[str | None, ConfigError | None]:
    """The configured token (None: none), or the reason one is configured but unusable."""
    path = settings.path(settings.operator_token_file) if settings.operator_token_file else None
    try:
        return rule.configured_token(path), None
    except ConfigError as exc:
        return None, exc


def server_address() -> str:
    return str(st.get_option("server.address") or "")


def access(settings) -> rule.Access:
    """This session's role now (the token file is read again, so a new token takes effect at once)."""
    token, problem = _token(settings)
    return rule.decide(local=rule.is_local_address(server_address()), token=token, token_broken=problem is not None,
                       typed=st.session_state.get(TYPED), identity=_identity(),
                       operators=rule.operator_emails(settings.operators))


def is_operator(settings) -> bool:
    return access(settings).operator


def refusal(role: rule.Access) -> str:
    """The one sentence a viewer gets for an operator action: why, and how to become the operator."""
    return {rule.NEEDS_TOKEN: _("Only the operator can do this: type the operator token under Operator in the "
                                "sidebar."),
            rule.NEEDS_LOGIN: _("Only the operator can do this: log in under Operator in the sidebar with an address "
                                "on the operators list."),
            rule.NEEDS_EITHER: _("Only the operator can do this: log in, or type the operator token, under Operator "
                                 "in the sidebar."),
            rule.BROKEN: _("Only the operator can do this, and the operator token set for this server cannot be used "
                           "(Operator in the sidebar says why)."),
            }.get(role.why, _("Only the operator can do this, and this server names none: whoever runs it sets "
                              "LORA_SPECTRUM_OPERATOR_TOKEN or operator_token_file in the config, then restarts it."))


def operator_button(settings, help_text: str | None) -> tuple[bool, str | None]:
    """(disabled, help) for an operator action's button: a viewer's is disabled, its help the sentence why."""
    role = access(settings)
    return (False, help_text) if role.operator else (True, refusal(role))


def refused(settings) -> bool:
    """Checked again when an operator action runs: True, with the sentence as a warning, for a viewer. (Streamlit
    1.67 already discards a press of a button drawn disabled in this run; this check does not depend on it.)"""
    role = access(settings)
    if not role.operator:
        st.warning(refusal(role))
    return not role.operator


def _check_typed(settings) -> None:
    """The password box's callback: keep the digest if it is the token, else say so once; empty the box. Spaces
    around it are dropped, as around the configured one (a pasted line)."""
    typed = st.session_state.get(BOX, "").strip()
    st.session_state[BOX] = ""
    if not typed:
        return
    token, _problem = _token(settings)
    if token is not None and rule.same_token(typed, token):
        st.session_state[TYPED] = rule.digest(typed)
        st.session_state.pop(WRONG, None)
    else:
        st.session_state[WRONG] = True


def _leave() -> None:
    st.session_state.pop(TYPED, None)


def operator_box(settings) -> rule.Access:
    """The sidebar's Operator box; nothing at all where everyone is the operator (this machine only, nothing
    configured). Returns this session's role."""
    role = access(settings)
    if role.why == rule.LOCAL:
        return role
    problem = _token(settings)[1]
    identity = _identity()
    with st.sidebar.expander(_("Operator"), expanded=not role.operator):
        if role.why == rule.TOKEN:
            st.caption(_("You are the operator in this session."))
            st.button(_("Stop being the operator"), key="operator_leave", on_click=_leave)
        elif role.why == rule.LOGIN:
            st.caption(md_escape(_("You are the operator (logged in as {email}).").format(email=identity.email)))
        elif role.why == rule.NOBODY:
            st.info(md_escape(
                _("Nobody is the operator: operators is set, but no login is configured (an [auth] section in "
                  ".streamlit/secrets.toml).") if settings.operators and not identity.provider else
                _("Nobody is the operator: this server listens on {address}, not on this machine only, and has no "
                  "operator token. To name one, set LORA_SPECTRUM_OPERATOR_TOKEN or operator_token_file in the "
                  "config and restart it.").format(address=server_address() or "0.0.0.0")))
        else:
            st.caption(_("You are a viewer: compare, probe, rank and download as you like; switching or downloading "
                         "the base, Ship and deleting History entries are the operator's."))
        if problem is not None:
            st.error(md_escape(error_text(problem)))
        if role.why in (rule.NEEDS_TOKEN, rule.NEEDS_EITHER):
            st.text_input(_("Operator token"), type="password", key=BOX, on_change=_check_typed, args=(settings,),
                          help=_("kept for this session only; ask whoever runs this server"))
            if st.session_state.pop(WRONG, False):
                st.error(_("That is not the operator token."))
        if identity.provider and role.why in (rule.NEEDS_LOGIN, rule.NEEDS_EITHER, rule.LOGIN):
            if identity.logged_in:
                if st.button(_("Log out"), key="operator_logout"):
                    st.logout()
            elif st.button(_("Log in"), key="operator_login"):
                st.login()
    return role
