"""Who may act for everyone (the operator) and who may only look (a viewer): the operator token, where it is read
from, how a typed one is compared, and the rule given the server's address, the token, the login and the
``operators`` list. No streamlit here: ``ui/operator.py`` gathers these facts from a session and draws the box.

The rule (docs/SECURITY.md, "Operators"): someone who typed the token, or who is logged in (Streamlit's login)
with an address on the ``operators`` list, is the operator. With neither a token nor an ``operators`` list
configured, everyone is the operator on a loopback address and nobody is on any other address."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from lora_spectrum.errors import ConfigError

TOKEN_ENV = "LORA_SPECTRUM_OPERATOR_TOKEN"  # the token itself; wins over ``operator_token_file``
MIN_TOKEN_CHARS = 16  # a shorter token could be guessed by typing into the box; refused, not accepted
MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"  # how to make one (quoted in errors)

# Why someone is or is not the operator (``Access.why``); ``ui/operator.py`` says each in a sentence.
LOCAL = "local"  # a loopback address and nothing configured: the one person at this machine
TOKEN = "token"  # typed the operator token in this session
LOGIN = "login"  # logged in with an address on the ``operators`` list
NEEDS_TOKEN = "needs token"  # a token is configured (no usable login): type it to become the operator
NEEDS_LOGIN = "needs login"  # an ``operators`` list and a login provider (no token): log in as one of them
NEEDS_EITHER = "needs either"  # both configured: either way works
NOBODY = "nobody"  # another address with nothing configured, or a list without a login provider: nobody can
BROKEN = "broken"  # a token is configured but cannot be read, or is too short: nobody can, until it is fixed


@dataclass(frozen=True)
class Identity:
    """Who Streamlit's login says this session is. ``provider``: an identity provider is configured
    (``.streamlit/secrets.toml`` ``[auth]``); ``verified``: False only where the provider says the e-mail address
    was not verified."""

    provider: bool = False
    logged_in: bool = False
    email: str = ""
    verified: bool = True


@dataclass(frozen=True)
class Access:
    """One session's role: ``operator`` or not, and ``why`` (one of the reasons above)."""

    operator: bool
    why: str


def is_local_address(address: str | None) -> bool:
    """Whether the server listens on this machine only: ``localhost`` or a loopback IP (``127.0.0.0/8``, ``::1``).
    Empty (Streamlit then listens on every interface), ``0.0.0.0``, ``::`` and every other address are not."""
    host = (address or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def configured_token(token_file: Path | None, environ=None) -> str | None:
    """The operator token: ``$LORA_SPECTRUM_OPERATOR_TOKEN`` if set, else the first line of ``token_file``
    (whitespace around it dropped), else None (no token configured). ``ConfigError`` for a file that cannot be read
    or is empty, and for a token under ``MIN_TOKEN_CHARS``; the message never contains the token."""
    value = (os.environ if environ is None else environ).get(TOKEN_ENV, "").strip()
    where = f"${TOKEN_ENV}"
    if not value and token_file is not None:
        where = f"operator_token_file {token_file}"
        try:
            lines = token_file.read_text(encoding="utf-8").strip().splitlines()
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file; create it with {MAKE_TOKEN}") from None
        except (OSError, UnicodeError) as exc:  # the type only: a decoding error would quote the file's bytes
            raise ConfigError(f"{where}: cannot be read ({type(exc).__name__})") from None
        value = lines[0].strip() if lines else ""
        if not value:
            raise ConfigError(f"{where}: the file is empty; write a token into it with {MAKE_TOKEN}")
    if not value:
        return None
    if len(value) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{where}: the operator token is shorter than {MIN_TOKEN_CHARS} characters; make a "
                          f"longer one with {MAKE_TOKEN}")
    return value


def digest(token: str) -> bytes:
    """What a session keeps of a token it typed (never the token itself): its SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def same_token(typed: str | bytes, token: str) -> bool:
    """Whether ``typed`` (a token, or a kept ``digest``) is ``token``, compared in constant time: both sides are
    hashed to the same length first, then ``hmac.compare_digest`` compares every byte whatever differs."""
    left = typed if isinstance(typed, bytes) else digest(typed)
    return hmac.compare_digest(left, digest(token))


def operator_emails(operators: list[str]) -> frozenset[str]:
    """The ``operators`` setting as compared: addresses without surrounding spaces, in lower case."""
    return frozenset(e.strip().lower() for e in operators if e.strip())


def decide(*, local: bool, token: str | None, token_broken: bool = False, typed: bytes | None = None,
           identity: Identity = Identity(), operators: frozenset[str] = frozenset()) -> Access:
    """The role of one session. ``local``: the server's address is a loopback one; ``token``: the configured token
    (None: none, or ``token_broken``: one is configured but unusable); ``typed``: the digest this session
    typed; ``identity``: its login; ``operators``: ``operator_emails`` of the setting."""
    if token is not None and typed is not None and same_token(typed, token):
        return Access(True, TOKEN)
    email = identity.email.strip().lower()
    if identity.provider and identity.logged_in and identity.verified and email and email in operators:
        return Access(True, LOGIN)
    if token_broken:
        return Access(False, BROKEN)
    can_login = identity.provider and bool(operators)
    if token is not None:
        return Access(False, NEEDS_EITHER if can_login else NEEDS_TOKEN)
    if can_login:
        return Access(False, NEEDS_LOGIN)
    if operators:  # a list without a login provider: configured, so not everyone, but nobody can log in
        return Access(False, NOBODY)
    return Access(True, LOCAL) if local else Access(False, NOBODY)
