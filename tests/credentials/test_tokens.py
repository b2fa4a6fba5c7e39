"""Credential parsing and signature checks, against Better Auth's rules (no I/O)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
from urllib.parse import quote, unquote

import pytest

from gateway.core.sessions import Reason
from gateway.credentials.tokens import (
    Credential,
    Kind,
    Verifier,
    cookie_header,
    cookie_value,
    decode_uri_component,
    find_credential,
    header_credential,
    sign,
)
from tests.support.credentials import BASE64

SECRET = "s" * 40
TOKEN = "B0Ge2XGXnPquvFYmDwnTF06iM1PSSnWw"
NAMES = ("__Secure-better-auth.session_token", "better-auth.session_token")
VERIFIER = Verifier(SECRET, accept_unsigned=True)
STRICT = Verifier(SECRET, accept_unsigned=False)


def signed(token: str = TOKEN, secret: str = SECRET) -> str:
    return sign(token, secret)


def test_sign_matches_better_calls_format() -> None:
    """A signature is standard padded base64 of HMAC-SHA256(secret, token), 44 characters."""
    mac = base64.b64encode(hmac.new(SECRET.encode(), TOKEN.encode(), hashlib.sha256).digest()).decode()
    assert signed() == f"{TOKEN}.{mac}"
    assert len(mac) == 44
    assert mac.endswith("=")


def test_live_better_auth_cookie_verifies() -> None:
    """The reference's live 1.7.25 cookie layout (percent-encoded + / =) decodes and verifies."""
    value = quote(signed(), safe="")
    assert "%3D" in value
    cred = find_credential(None, None, f"better-auth.session_token={value}", NAMES)
    assert cred == Credential(";" + value, Kind.cookie, value)
    assert VERIFIER.token(cred) == TOKEN


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("a=1; better-auth.session_token=v1; better-auth.session_token=v2", "v1"),  # first wins
        ("better-auth.session_token = v1 ", "v1"),  # trimmed, like JS trim()
        ('better-auth.session_token="v1"', "v1"),  # surrounding quotes stripped
        ("xbetter-auth.session_token=v1", None),  # a longer name is another cookie
        ("a=better-auth.session_token=v1", None),  # inside another cookie's value
        ("junk; better-auth.session_token=v1", "v1"),  # a part without '=' is skipped
        ("better-auth.session_token=v1; __Secure-better-auth.session_token=v2", "v2"),  # __Secure- preferred
        ("other=1", None),
        ("", None),
    ],
)
def test_cookie_parsing_follows_better_call(header: str, expected: str | None) -> None:
    """The session cookie is found exactly as better-call's parseCookies finds it."""
    assert cookie_value(header, NAMES) == expected


def test_plus_is_not_a_space() -> None:
    """Percent-decoding is decodeURIComponent, not form decoding: '+' stays '+'."""
    token = next(t for t in (f"{TOKEN[:-2]}{i:02d}" for i in range(100)) if "+" in signed(t))
    raw = signed(token)
    assert VERIFIER.token(Credential(raw, Kind.cookie, raw)) == token
    spaced = raw.replace("+", " ")
    assert VERIFIER.token(Credential(spaced, Kind.cookie, spaced)) is Reason.malformed
    encoded = raw.replace("+", "%2B")
    assert VERIFIER.token(Credential(encoded, Kind.cookie, encoded)) == token


@pytest.mark.parametrize(
    ("authorization", "kind", "value"),
    [
        (f"Bearer {TOKEN}", Kind.bearer, TOKEN),
        (f"bEaReR   {TOKEN}  ", Kind.bearer, TOKEN),  # scheme case-insensitive, value trimmed
    ],
)
def test_bearer_found(authorization: str, kind: Kind, value: str) -> None:
    """``Authorization: Bearer`` is found whatever the scheme's case; the key is the whole header."""
    cred = find_credential(authorization, None, "better-auth.session_token=x", NAMES)
    assert cred == Credential(authorization, kind, value)


@pytest.mark.parametrize("authorization", ["Basic dXNlcjpwYXNz", "Bearer ", "Bearer", "Token abc"])
def test_other_authorization_schemes_are_not_credentials(authorization: str) -> None:
    """Another scheme (or an empty bearer) is ignored, as Better Auth's bearer plugin ignores it."""
    cookie = f"better-auth.session_token={signed()}"
    cred = find_credential(authorization, None, cookie, NAMES)
    assert cred is not None
    assert cred.kind is Kind.cookie


def test_precedence_bearer_then_header_then_cookie() -> None:
    """Bearer wins over X-Session-Token, which wins over the cookie."""
    cookie = "better-auth.session_token=c"
    assert find_credential("Bearer b", "h", cookie, NAMES).kind is Kind.bearer  # type: ignore[union-attr]
    assert find_credential(None, "h", cookie, NAMES).kind is Kind.header  # type: ignore[union-attr]
    assert find_credential(None, None, cookie, NAMES).kind is Kind.cookie  # type: ignore[union-attr]
    assert find_credential(None, None, None, NAMES) is None


def test_raw_bearer_accepted_unless_signatures_required() -> None:
    """A raw token is a credential by default and refused when signatures are required."""
    cred = find_credential(f"Bearer {TOKEN}", None, None, NAMES)
    assert cred is not None
    assert VERIFIER.token(cred) == TOKEN
    assert STRICT.token(cred) is Reason.unsigned_token


def test_signed_bearer_percent_encoded_or_not() -> None:
    """A signed bearer verifies raw (set-auth-token) and percent-encoded (a cookie value)."""
    for value in (signed(), quote(signed(), safe="")):
        cred = find_credential(f"Bearer {value}", None, None, NAMES)
        assert cred is not None
        assert STRICT.token(cred) == TOKEN


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (signed(secret="another-secret-another-secret-1234"), Reason.bad_signature),
        (signed()[:-2] + "A=", Reason.bad_signature),  # tampered signature
        ("A" * 32 + signed()[32:], Reason.bad_signature),  # tampered token
        (signed()[:-1], Reason.malformed),  # 43 characters
        (signed().rstrip("="), Reason.malformed),
        (signed().replace(".", ""), Reason.malformed),
        ("." + signed().split(".")[1], Reason.malformed),  # empty token
        ("short." + signed().split(".")[1], Reason.malformed),
        (TOKEN + ".!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=", Reason.malformed),
        (TOKEN[:-1] + "é." + signed().split(".")[1], Reason.malformed),  # non-ASCII token
        ("x" * 100_000, Reason.malformed),
        ("%ff%fe." + "A" * 43 + "=", Reason.malformed),  # invalid UTF-8 escape: kept raw
        ("' OR 1=1 --", Reason.malformed),
    ],
)
def test_cookie_refusals(value: str, reason: Reason) -> None:
    """Forged, tampered and malformed cookie values are refused with the right reason."""
    assert VERIFIER.token(Credential(value, Kind.cookie, value)) is reason


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize(
    "signature",
    ["é" + "A" * 42 + "=", "%C3%A9" + "A" * 42 + "%3D", "A" * 42 + "\u00ff=", "A" * 42 + "\ud800=", "٣" * 43 + "="],
)
def test_a_non_ascii_signature_is_malformed(kind: Kind, signature: str) -> None:
    """One non-ASCII character in a signature of the right length: malformed, never an exception (it was a 500)."""
    value = TOKEN + "." + signature
    assert VERIFIER.token(Credential(value, kind, value)) is Reason.malformed


def test_raw_cookie_token_is_refused() -> None:
    """A cookie must be signed: a bare token in the cookie is refused even when raw bearers are allowed."""
    assert VERIFIER.token(Credential(TOKEN, Kind.cookie, TOKEN)) is Reason.malformed


@pytest.mark.parametrize("raw", ["' OR 1=1 --", "a" * 31, "a" * 33, "ab\x00" * 11, "../../etc/passwd" * 2])
def test_implausible_raw_tokens_are_refused_without_io(raw: str) -> None:
    """A raw value that cannot be a 32-character alphanumeric token is malformed."""
    assert VERIFIER.token(header_credential(raw)) is Reason.malformed


def test_legacy_ids_accept_other_shapes() -> None:
    """With the legacy schema (session.id is the token) uuid-like ids are plausible."""
    legacy = Verifier(SECRET, accept_unsigned=True, legacy_ids=True)
    uuid = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
    assert legacy.token(header_credential(uuid)) == uuid
    assert legacy.token(header_credential("bad id")) is Reason.malformed


def test_keys_of_different_kinds_never_collide() -> None:
    """The cache key embeds the kind, so a raw token accepted as a bearer can't be replayed as a cookie."""
    bearer = find_credential(f"Bearer {TOKEN}", None, None, NAMES)
    header = header_credential(TOKEN)
    cookie = find_credential(None, None, f"better-auth.session_token={TOKEN}", NAMES)
    assert bearer is not None
    assert cookie is not None
    assert len({bearer.key, header.key, cookie.key}) == 3


@pytest.mark.parametrize("value", [TOKEN, signed()], ids=["raw", "signed"])
def test_a_cookie_never_has_another_kinds_key(value: str) -> None:
    """A cookie spelled as another kind's key (``Bearer <value>``, ``x:<value>``) has a key of
    its own, as sent and once proved: no cookie key is ever a bearer's or a header's."""
    for spelled, other in (
        (f"Bearer {value}", find_credential(f"Bearer {value}", None, None, NAMES)),
        (f"x:{value}", header_credential(value)),
    ):
        cookie = find_credential(None, None, f"better-auth.session_token={spelled}", NAMES)
        assert cookie is not None
        assert other is not None
        assert cookie.key != other.key
        proof = VERIFIER.prove(other)
        assert not isinstance(proof, Reason)
        assert cookie.key != proof.key
    cookie = find_credential(None, None, f"better-auth.session_token={signed()}", NAMES)
    assert cookie is not None
    proof = VERIFIER.prove(cookie)
    assert not isinstance(proof, Reason)
    assert cookie.key == proof.key  # the home of a cookie spelled as Better Auth writes it is its key
    assert proof.key.startswith(";")


def test_many_cookies() -> None:
    """A header with thousands of cookies is parsed without error, and the right one found."""
    header = "; ".join(f"c{i}=v{i}" for i in range(5000)) + "; better-auth.session_token=found"
    assert cookie_value(header, NAMES) == "found"


class _Fields:
    def __init__(self, *values: str) -> None:
        self.values = list(values)

    def get_all(self, key: str) -> list[str]:
        assert key == "cookie"
        return self.values


def test_every_cookie_field_is_read() -> None:
    """Several Cookie fields are joined with "; ", in order, as Node.js joins them for Better Auth."""
    assert cookie_header(_Fields()) is None  # type: ignore[arg-type]
    assert cookie_header(_Fields("a=1")) == "a=1"  # type: ignore[arg-type]
    assert cookie_header(_Fields("a=1", "b=2; c=3")) == "a=1; b=2; c=3"  # type: ignore[arg-type]


def test_every_spelling_of_a_credential_has_one_home_key() -> None:
    """Red team of issue 14, findings B and J: Better Auth accepts every percent-encoded spelling of
    a signed value, every spelling of the signature's last character (its two unused bits) and any
    case of ``Bearer``. After the check, the gateway keys caches by the *home* spelling: the one
    Better Auth writes (``encodeURIComponent``), or the unencoded one for a value sent without
    ``%``; so a token has at most two keys per kind, and Better Auth's own spelling is its own."""
    value = signed()
    canonical = quote(value, safe="")
    respelled = "".join(f"%{ord(c):02X}" if i % 3 == 0 else c for i, c in enumerate(value))
    last = value[-2]  # the 43rd character's 2 low bits carry nothing: 4 spellings decode alike
    sloppy = value[:-2] + BASE64[BASE64.index(last) ^ 1] + "="
    assert VERIFIER.token(Credential(sloppy, Kind.cookie, sloppy)) == TOKEN  # the unused bits are ignored
    lower = re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), canonical)
    for spelling in (canonical, respelled, quote(sloppy, safe=""), lower):
        assert VERIFIER.prove(Credential(spelling, Kind.cookie, spelling)) == (TOKEN, ";" + canonical)
    for spelling in (value, sloppy):
        assert VERIFIER.prove(Credential(spelling, Kind.cookie, spelling)) == (TOKEN, ";" + value)
    for header in (f"Bearer {value}", f"bEaReR   {sloppy} ", f"bearer {value}"):
        found = find_credential(header, None, None, NAMES)
        assert found is not None
        assert VERIFIER.prove(found) == (TOKEN, f"Bearer {value}")
    assert VERIFIER.prove(header_credential(f" {respelled}")) == (TOKEN, f"x:{canonical}")
    raw = find_credential(f"BEARER {TOKEN}", None, None, NAMES)
    assert raw is not None
    assert VERIFIER.prove(raw) == (TOKEN, f"Bearer {TOKEN}")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a%2Bb%2Fc%3D", "a+b/c="),  # what encodeURIComponent makes of a signed value
        ("a%2bb%2fc%3d", "a+b/c="),  # in lower case too
        ("a%25b", "a%b"),  # another escape: the general path
        ("a%2B%25", "a+%"),
        ("%%2B", "%%2B"),  # a bad escape: kept raw, as decodeURIComponent's failure
        ("a%2", "a%2"),
        ("%C3%A9%2B", "é+"),
        ("%FF%2B", "%FF%2B"),  # not UTF-8: kept raw
        ("plain", "plain"),
    ],
)
def test_percent_decoding_is_decode_uri_components(value: str, expected: str) -> None:
    """The fast path for a signed value's three escapes answers as the general one, whatever else is there."""
    assert decode_uri_component(value) == expected


def _general_decoding(value: str) -> str:
    """``decode_uri_component`` before its fast path: ``unquote``, kept raw on a bad escape or bad UTF-8."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", value):
        return value
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        return value


def test_the_fast_decoding_agrees_with_the_general_one_on_every_short_mix_of_escapes() -> None:
    """Red team of the six-replace fast path: every string of up to five of these characters decodes as before.

    The alphabet is the fast path's escapes, the characters around them and other escapes'
    digits (``%25``, ``%2C``...), so split, nested, doubled and case-mixed escapes all occur.
    (The same 177,161 strings were compared with node's ``decodeURIComponent``: no difference.)
    """
    alphabet = "%2BbFf3Dd5A"
    for length in range(1, 6):
        for chars in itertools.product(alphabet, repeat=length):
            value = "".join(chars)
            assert decode_uri_component(value) == _general_decoding(value), value
