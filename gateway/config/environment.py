"""``load_settings``: the environment read once into a typed ``Settings``, every problem at once.

Better Auth's own variable names are honoured (``DATABASE_URL``, ``BETTER_AUTH_SECRET``,
``BETTER_AUTH_SECRETS``, ``AUTH_SECRET``, ``REDIS_URL``, ``BETTER_AUTH_URL``); every other
setting is ``GATEWAY_<FIELD>``. Unknown ``GATEWAY_*`` names are refused, so a typo is an error
instead of a silently ignored setting.

Every secret-bearing variable can instead be read from a file, Docker and Kubernetes style:
``X_FILE`` names a file whose content, less its trailing newlines, is ``X``'s value. Setting
both is an error, and so is a file that cannot be read or is empty; a problem names the
variable and the path, never the content.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec

from gateway.config.checks import validate
from gateway.config.settings import Secret, Settings
from gateway.core.errors import ConfigError
from gateway.core.fields import returned_fields
from gateway.core.networks import Network, parse_networks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    Check = Callable[[Settings], list[str]]

_ENV_PREFIX = "GATEWAY_"
_INVALID = object()
# Variables whose value is a credential or may embed one (a DSN's password): each has an ``_FILE`` twin.
SECRET_VARIABLES = (
    "BETTER_AUTH_SECRET",
    "BETTER_AUTH_SECRETS",
    "AUTH_SECRET",
    "DATABASE_URL",
    "GATEWAY_DATABASE_URL",
    "REDIS_URL",
    "GATEWAY_REDIS_URL",
    "GATEWAY_SECONDARY_STORAGE_URL",
    "GATEWAY_READ_DATABASE_URL",
    "GATEWAY_LISTEN_DATABASE_URL",
)
# Fields not read from a GATEWAY_* variable of their own: Better Auth's names, and what is worked out.
_NOT_VARIABLES = frozenset(
    {"database_url", "redis_url", "secondary_storage_url", "read_database_url", "listen_database_url"}
    | {"secrets", "returned_fields"}
)


def load_settings(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    need: frozenset[str] = frozenset({"secret", "database"}),
    checks: Iterable[Check] = (),
) -> Settings:
    """Build ``Settings`` from ``environ`` (``os.environ`` if omitted) and keyword overrides.

    ``need`` names what the caller cannot work without (``"secret"``, ``"database"``): serving
    needs both; printing the trigger SQL needs neither. ``checks`` are the caller's own, run with
    config's (the HTTP adapter's rules file), so that every problem is still reported at once.
    An override given as text is read as its variable would be (``trusted_proxies="10.0.0.0/8"``).

    Raises:
        ConfigError: listing every missing, unknown or invalid setting, each naming its variable.
    """
    env = dict(os.environ if environ is None else environ)
    problems: list[str] = []
    _read_secret_files(env, problems)
    values: dict[str, object] = {}
    _read_better_auth_names(env, values, problems)
    _read_gateway_names(env, values, problems)
    for field, value in (overrides or {}).items():
        parsed = value
        if isinstance(value, str) and field in _PARSERS:
            parsed = _convert(field, field, value, None, problems)
        if parsed is not _INVALID:
            values[field] = parsed
    _derive(values)
    # Invalid values were left at their defaults, so the cross-field checks still run and
    # every problem is reported in one go. Each value was converted to its field's type above.
    settings = Settings(**values)  # type: ignore[arg-type]
    problems.extend(validate(settings, need))
    for check in checks:
        problems.extend(check(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def _read_secret_files(env: dict[str, str], problems: list[str]) -> None:
    """Replace each ``X_FILE`` by ``X``, holding the file's content less its trailing newlines."""
    for name in SECRET_VARIABLES:
        path = env.pop(f"{name}_FILE", "")
        if not path:
            continue
        if env.get(name):
            problems.append(f"{name} and {name}_FILE: both set; set one")
            continue
        try:
            content = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except UnicodeDecodeError:  # its message quotes the content's bytes
            problems.append(f"{name}_FILE: {path} is not UTF-8 text")
            continue
        except OSError as exc:
            problems.append(f"{name}_FILE: cannot read {path} ({exc.strerror or type(exc).__name__})")
            continue
        if not content:
            problems.append(f"{name}_FILE: {path} is empty")
            continue
        env[name] = content


def _read_better_auth_names(env: dict[str, str], values: dict[str, object], problems: list[str]) -> None:
    for name in ("database_url", "redis_url"):
        alias = env.pop(f"GATEWAY_{name.upper()}", None)
        url = env.get(name.upper()) or alias
        if url:
            values[name] = Secret(url)
    if secondary := env.pop("GATEWAY_SECONDARY_STORAGE_URL", None):
        values["secondary_storage_url"] = Secret(secondary)
    for name in ("read_database_url", "listen_database_url"):
        if url := env.pop(f"GATEWAY_{name.upper()}", None):
            values[name] = Secret(url)
    if env.get("BETTER_AUTH_URL") and "GATEWAY_BASE_URL" not in env:  # Better Auth's env fallback
        values["base_url"] = env["BETTER_AUTH_URL"]
    if env.get("BETTER_AUTH_SECRETS"):
        values["secrets"] = _parse_versioned_secrets(env["BETTER_AUTH_SECRETS"], problems)
    elif env.get("BETTER_AUTH_SECRET") or env.get("AUTH_SECRET"):
        values["secrets"] = (Secret(env.get("BETTER_AUTH_SECRET") or env["AUTH_SECRET"]),)


def _read_gateway_names(env: dict[str, str], values: dict[str, object], problems: list[str]) -> None:
    """Every ``GATEWAY_<FIELD>`` as its field's type; any other ``GATEWAY_*`` name is unknown."""
    fields = {f.name: f.type for f in msgspec.structs.fields(Settings)}
    for name, raw in env.items():
        if not name.startswith(_ENV_PREFIX) or name.startswith("GATEWAY_TEST_"):
            continue
        field = name[len(_ENV_PREFIX) :].lower()
        if field not in fields or field in _NOT_VARIABLES:
            problems.append(f"{name}: unknown setting")
            continue
        value = _convert(name, field, raw, fields[field], problems)
        if value is not _INVALID:
            values[field] = value


def _parse_versioned_secrets(raw: str, problems: list[str]) -> tuple[Secret, ...]:
    """Parse Better Auth's ``"2:new,1:old"`` list; the first entry is the current secret."""
    out: list[Secret] = []
    for item in raw.split(","):
        version, sep, value = item.strip().partition(":")
        if not sep or not version.strip().isdigit() or not value:
            problems.append("BETTER_AUTH_SECRETS: expected '<version>:<secret>,...', e.g. '2:new,1:old'")
            return ()
        out.append(Secret(value))
    return tuple(out)


def _convert(name: str, field: str, raw: str, typ: object, problems: list[str]) -> object:
    """``raw`` as the field's type; on failure a problem naming the variable, and ``_INVALID``."""
    try:
        if field in _PARSERS:
            return _PARSERS[field](raw)
        if typ == dict[str, str]:
            return _parse_mapping(raw)
        return msgspec.convert(raw, typ, strict=False)
    except msgspec.ValidationError as exc:
        problems.append(f"{name}: {exc} (got {raw!r})")
    except ValueError as exc:
        problems.append(f"{name}: {exc}")
    return _INVALID


def _parse_mapping(raw: str) -> dict[str, str]:
    """Parse ``"field=column,field=column"``."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            msg = f"expected 'field=column,...', got {item!r}"
            raise ValueError(msg)
        out[key.strip()] = value.strip()
    return out


def _parse_hosts(raw: str) -> tuple[str, ...]:
    """Parse ``"app.example.com, .example.org"``: lower case, blanks dropped."""
    return tuple(host.strip().lower() for host in raw.split(",") if host.strip())


_PARSERS: dict[str, Callable[[str], tuple[Network, ...] | tuple[str, ...]]] = {
    "trusted_proxies": parse_networks,
    "rate_limit_exempt": parse_networks,
    "redirect_hosts": _parse_hosts,
    "api_key_headers": _parse_hosts,  # header names: lower case, blanks dropped
}


def _derive(values: dict[str, object]) -> None:
    """Fill in what other settings decide: the default redirect host, the fields an answer may hold."""
    if not values.get("redirect_hosts") and values.get("login_url"):
        try:
            login_host = urlsplit(str(values["login_url"])).hostname
        except ValueError:  # the checks name a bad login URL
            login_host = None
        values["redirect_hosts"] = (login_host,) if login_host else ()
    with contextlib.suppress(KeyError):  # an unknown plugin: the checks name it
        values["returned_fields"] = returned_fields(*(str(values.get(k, "")) for k in _FIELD_SETTINGS))


_FIELD_SETTINGS = (
    "plugins",
    "user_additional_fields",
    "session_additional_fields",
    "user_hidden_fields",
    "session_hidden_fields",
)
