"""The operator rule (access.py): which addresses are local, where the token comes from (and what is refused,
without ever quoting it), the constant-time comparison, and who is the operator in every combination."""

from __future__ import annotations

import hmac

import pytest

from lora_spectrum import access
from lora_spectrum.access import TOKEN_ENV, Identity, configured_token, decide, digest, operator_emails, same_token
from lora_spectrum.errors import ConfigError

SECRET = "s3cret-operator-token-0123456789"


@pytest.mark.parametrize("address, local", [
    ("127.0.0.1", True), ("127.0.1.1", True), ("localhost", True), ("LOCALHOST", True), ("::1", True),
    ("[::1]", True), (" 127.0.0.1 ", True),
    ("", False), (None, False), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("10.0.0.5", False),
    ("myhost.internal", False), ("localhost.example.com", False),
])
def test_only_loopback_addresses_are_local(address, local):
    """Unset means every interface (Streamlit's default), so it is not local; a host name other than localhost may
    resolve to anything."""
    assert access.is_local_address(address) is local


def test_the_token_comes_from_the_environment_first_then_the_file(tmp_path):
    file = tmp_path / "token.txt"
    file.write_text(f"  {SECRET}\n# a comment after the first line\n", encoding="utf-8")
    assert configured_token(file, environ={}) == SECRET, "the first line, without its spaces"
    assert configured_token(file, environ={TOKEN_ENV: "env-token-abcdefghijklmnop"}) == "env-token-abcdefghijklmnop"
    assert configured_token(None, environ={TOKEN_ENV: f" {SECRET}\n"}) == SECRET
    assert configured_token(None, environ={}) is None, "none configured"
    assert configured_token(None, environ={TOKEN_ENV: "  "}) is None, "an empty variable is none"


def test_an_unusable_token_is_refused_without_quoting_it(tmp_path):
    short = "abc123-short"
    cases = {"missing": (tmp_path / "nope.txt", "no such file"),
             "empty": (tmp_path / "empty.txt", "the file is empty"),
             "short": (tmp_path / "short.txt", f"shorter than {access.MIN_TOKEN_CHARS} characters"),
             "binary": (tmp_path / "binary.txt", "cannot be read (UnicodeDecodeError)"),
             "folder": (tmp_path, "cannot be read (IsADirectoryError)")}
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    (tmp_path / "short.txt").write_text(short, encoding="utf-8")
    (tmp_path / "binary.txt").write_bytes(b"zq\xff\xfe-hidden-bytes-here")
    for name, (path, words) in cases.items():
        with pytest.raises(ConfigError) as err:
            configured_token(path, environ={})
        message = str(err.value)
        assert words in message and "operator_token_file" in message, (name, message)
        assert short not in message and "hidden" not in message and "zq" not in message, message
        assert "secrets.token_urlsafe" in message or "cannot be read" in message, "says how to make one"
        chained = err.value.__cause__ or (None if err.value.__suppress_context__ else err.value.__context__)
        assert chained is None, "no chained error (a decoding error would quote the file's bytes)"
    with pytest.raises(ConfigError, match=f"\\${TOKEN_ENV}: the operator token is shorter") as err:
        configured_token(None, environ={TOKEN_ENV: short})
    assert short not in str(err.value)


def test_tokens_are_compared_in_constant_time(monkeypatch):
    """Both sides hashed to 32 bytes, then ``hmac.compare_digest`` (never ``==``), for a typed token and for the
    digest a session keeps."""
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", spy)
    assert same_token(SECRET, SECRET) and same_token(digest(SECRET), SECRET)
    assert not same_token(SECRET[:-1], SECRET) and not same_token("", SECRET) and not same_token(SECRET + "x", SECRET)
    assert len(calls) == 5 and all(len(a) == len(b) == 32 for a, b in calls), "equal lengths: no early exit"
    assert digest(SECRET) != SECRET.encode() and SECRET.encode() not in digest(SECRET)


def test_the_operators_list_is_compared_without_case_or_spaces():
    assert operator_emails([" Alice@Example.com ", "", "bob@example.com"]) == {"alice@example.com", "bob@example.com"}


ALICE = Identity(provider=True, logged_in=True, email="Alice@example.com")
EVE = Identity(provider=True, logged_in=True, email="eve@example.com")
UNVERIFIED = Identity(provider=True, logged_in=True, email="alice@example.com", verified=False)
NOT_IN = Identity(provider=True)  # a login provider, nobody logged in
OPS = operator_emails(["alice@example.com"])


@pytest.mark.parametrize("kwargs, role", [
    # Nothing configured: the address decides.
    ({"local": True, "token": None}, (True, access.LOCAL)),
    ({"local": False, "token": None}, (False, access.NOBODY)),
    # A token: asked for on every address (a reverse proxy on this machine makes every visitor local).
    ({"local": True, "token": SECRET}, (False, access.NEEDS_TOKEN)),
    ({"local": False, "token": SECRET}, (False, access.NEEDS_TOKEN)),
    ({"local": False, "token": SECRET, "typed": digest(SECRET)}, (True, access.TOKEN)),
    ({"local": False, "token": SECRET, "typed": digest("wrong-token-abcdefghij")}, (False, access.NEEDS_TOKEN)),
    ({"local": True, "token": None, "token_broken": True}, (False, access.BROKEN)),
    ({"local": True, "token": None, "token_broken": True, "typed": digest(SECRET)}, (False, access.BROKEN)),
    # Streamlit's login with an operators list.
    ({"local": False, "token": None, "identity": ALICE, "operators": OPS}, (True, access.LOGIN)),
    ({"local": False, "token": None, "identity": NOT_IN, "operators": OPS}, (False, access.NEEDS_LOGIN)),
    ({"local": True, "token": None, "identity": EVE, "operators": OPS}, (False, access.NEEDS_LOGIN)),
    ({"local": False, "token": None, "identity": UNVERIFIED, "operators": OPS}, (False, access.NEEDS_LOGIN)),
    ({"local": False, "token": SECRET, "identity": NOT_IN, "operators": OPS}, (False, access.NEEDS_EITHER)),
    ({"local": False, "token": SECRET, "identity": ALICE, "operators": OPS}, (True, access.LOGIN)),
    # A login alone names nobody; an e-mail without a login provider (AppTest's default user) counts for nothing.
    ({"local": False, "token": None, "identity": ALICE}, (False, access.NOBODY)),
    ({"local": True, "token": None, "identity": ALICE}, (True, access.LOCAL)),
    ({"local": False, "token": None, "identity": Identity(email="alice@example.com"), "operators": OPS},
     (False, access.NOBODY)),
    ({"local": True, "token": None, "identity": Identity(email="alice@example.com"), "operators": OPS},
     (False, access.NOBODY)),
])
def test_who_is_the_operator(kwargs, role):
    got = decide(**kwargs)
    assert (got.operator, got.why) == role
