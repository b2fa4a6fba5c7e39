"""Per-route policy: who, among the signed-in, may pass. No I/O.

A policy comes from the auth URL's query (``/validate?allowed_roles=admin``, as oauth2-proxy's
``/oauth2/auth`` takes them), or else from the first rule of ``GATEWAY_RULES_FILE`` matching the
original host, path and method (for proxies that can't vary the auth URL per route, like Envoy);
each worker reloads that file on SIGHUP and when it changes (``rules_file``).
Signed in but not allowed is a 403, never a redirect. Rules see the host and path only after
``canonical`` has checked them; a path whose readings select different rules is refused.

Rules file (TOML, or JSON with the same shape)::

    [[rules]]
    host = "admin.example.com"      # optional; ".example.com": example.com and every subdomain
    path_prefix = "/admin"          # optional; lower case
    methods = ["POST", "DELETE"]    # optional ("GET" covers HEAD); or methods_except = ["GET", ...]
    allowed_roles = ["admin"]
    allowed_org_roles = ["owner", "admin"]  # the member's role in the active organization
    # also: allowed_emails, allowed_email_domains, require_verified_email, allow_anonymous, satisfy,
    # allow_unverified_email

What a rule names, it guards (red team of issue 14), so a rule loads only if it can match:

- ``path_prefix`` is a string prefix of the path (``/reports`` covers ``/reports.json`` and
  ``/reportsx`` too), and one ending in ``/`` also covers the path without it (``/reports/``
  covers ``/reports``, the collection a ``POST`` creates in, as every router routes it). It must
  be lower case: paths are matched case-folded as well as as sent (``canonical``).
- ``host`` is a name without a port (the port is dropped before comparing); a leading dot means
  the domain and its subdomains, as nginx's ``server_name .example.com`` does.
- ``methods = ["GET"]`` covers ``HEAD`` (every framework runs the GET handler for it);
  ``methods_except`` names the methods a rule does *not* cover, for "every write, whatever its
  name" (``MOVE``, ``PURGE``, ...).

A request that names other methods (``X-HTTP-Method-Override``, ``X-HTTP-Method``,
``X-Method-Override``, ``?_method=``, which frameworks run in place of the method sent) is judged
under each: they must all select the same rule, or the request is refused.

A query policy on the auth URL applies *together with* the rules file: a request must satisfy
both (``Both``), so an ``?allowed_roles=admin`` route still obeys its host's rule.

An e-mail rule (``allowed_emails``, ``allowed_email_domains``) counts only a verified address
(``emailVerified``): Better Auth lets anyone sign up as ``x@yourcorp.com`` without proving it, so
an unverified address proves nothing (oauth2-proxy refuses them too). ``allow_unverified_email``
says otherwise, for one rule or one auth URL.

``allowed_org_roles`` (``GATEWAY_ORGANIZATIONS=on``, else refused): any of the member's roles in
the active organization (``"admin,member"``); no active organization or membership never meets
it. A list naming no role, or a bad name (``core.roles``), is refused (at load; ``bad_policy``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple
from urllib.parse import parse_qs

import msgspec

from gateway.core.roles import any_role, org_condition, split_roles
from gateway.http import canonical

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.core.sessions import Session
    from gateway.http.original import Original

_QUERY_KEYS = frozenset(
    {
        "allowed_roles",
        "allowed_org_roles",
        "allowed_emails",
        "allowed_email_domains",
        "require_verified_email",
        "allow_unverified_email",
        "allow_anonymous",
        "satisfy",
    }
)
_TRUE = frozenset({"1", "true", "yes", "on"})


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a signed-in user must satisfy; empty constraints are not checked."""

    allowed_roles: frozenset[str] = frozenset()
    # organizations: UNSET is no condition; an empty list, or null, is refused (never read as none)
    allowed_org_roles: frozenset[str] | msgspec.UnsetType = msgspec.UNSET
    allowed_emails: frozenset[str] = frozenset()
    allowed_email_domains: frozenset[str] = frozenset()
    require_verified_email: bool = False
    allow_unverified_email: bool = False  # e-mail rules also match addresses nobody verified
    allow_anonymous: bool = False
    satisfy: Literal["all", "any"] = "all"

    def allows(self, session: Session) -> bool:
        """Whether the session's user passes (``satisfy``: every given constraint, or any one)."""
        user = session.user
        # An unverified address matches no e-mail rule (see the module docstring).
        email = str(user.get("email") or "").lower() if self._email_counts(user) else ""
        checks = []
        if self.allowed_roles:
            roles = {r.strip() for r in (session.role or "").split(",")}  # Better Auth: "admin,user"
            checks.append(bool(roles & self.allowed_roles))
        if not isinstance(self.allowed_org_roles, msgspec.UnsetType):  # no active organization: no role, fails
            checks.append(any_role(session.org_role, self.allowed_org_roles))
        if self.allowed_emails:
            checks.append(email in self.allowed_emails)
        if self.allowed_email_domains:
            domain = email.rpartition("@")[2]
            checks.append(bool(email) and any(_domain_matches(domain, d) for d in self.allowed_email_domains))
        if self.require_verified_email:
            checks.append(user.get("emailVerified") is True)
        if not checks:
            return True
        return any(checks) if self.satisfy == "any" else all(checks)

    def _email_counts(self, user: dict[str, object]) -> bool:
        return self.allow_unverified_email or user.get("emailVerified") is True


DEFAULT = Policy()


def _domain_matches(domain: str, allowed: str) -> bool:
    return domain == allowed or (allowed.startswith(".") and domain.endswith(allowed))


def _host_matches(hostname: str, rule_host: str) -> bool:
    """``.example.com`` is example.com and its subdomains (nginx's ``server_name``); else the name.

    Only a leading-dot rule also covers its name without the dot: ``public.example.com`` does not
    cover ``ublic.example.com`` (red team, round 2, finding 1).
    """
    return _domain_matches(hostname, rule_host) or (rule_host.startswith(".") and hostname == rule_host[1:])


def _prefix_matches(path: str, prefix: str) -> bool:
    """A raw prefix; one ending in ``/`` also covers the path without it (``/reports/``: ``/reports``)."""
    return path.startswith(prefix) or (prefix.endswith("/") and len(prefix) > 1 and path == prefix[:-1])


class Both(NamedTuple):
    """The auth URL's query policy and the rules file's, both to be satisfied."""

    query: Policy
    rule: Policy

    @property
    def allow_anonymous(self) -> bool:
        """Anonymous only where both allow it."""
        return self.query.allow_anonymous and self.rule.allow_anonymous

    def allows(self, session: Session) -> bool:
        """Whether the session's user passes both."""
        return self.query.allows(session) and self.rule.allows(session)


def both(query: Policy | None, rule: Policy) -> Policy | Both:
    """The policy a request must satisfy: the query's (if any) and the rule's."""
    if query is None:
        return rule
    return query if rule is DEFAULT else Both(query, rule)


def from_query(query: str, *, organizations: bool = False) -> Policy | None:
    """The policy in an auth URL's query string, or ``None`` if it names none.

    ``organizations``: whether ``allowed_org_roles`` can be met (GATEWAY_ORGANIZATIONS=on).

    Raises:
        ValueError: a policy parameter has an invalid value.
    """
    if not query:
        return None
    # With blank values: "?allowed_org_roles=" is a bad condition, not no condition; the others drop them.
    kept = {k: v for k, v in parse_qs(query, keep_blank_values=True).items() if k in _QUERY_KEYS}
    params = {k: present for k, v in kept.items() if (present := [x for x in v if x])}
    if not kept:
        return None

    def items(key: str) -> frozenset[str]:
        return frozenset(x.strip().lower() for v in params.get(key, []) for x in v.split(",") if x.strip())

    satisfy = params.get("satisfy", ["all"])[-1]
    org_values = split_roles(kept["allowed_org_roles"]) if "allowed_org_roles" in kept else None
    org_roles = org_condition(org_values, "allowed_org_roles", organizations=organizations)
    if satisfy not in ("all", "any"):
        raise ValueError("satisfy must be 'all' or 'any'")
    return Policy(
        allowed_roles=frozenset(x.strip() for v in params.get("allowed_roles", []) for x in v.split(",") if x.strip()),
        allowed_org_roles=msgspec.UNSET if org_roles is None else org_roles,
        allowed_emails=items("allowed_emails"),
        allowed_email_domains=items("allowed_email_domains"),
        require_verified_email=params.get("require_verified_email", ["0"])[-1].lower() in _TRUE,
        allow_unverified_email=params.get("allow_unverified_email", ["0"])[-1].lower() in _TRUE,
        allow_anonymous=params.get("allow_anonymous", ["0"])[-1].lower() in _TRUE,
        satisfy=satisfy,  # type: ignore[arg-type]
    )


class Rule(Policy, frozen=True, forbid_unknown_fields=True):
    """A policy for the requests matching ``host``, ``path_prefix`` and ``methods``."""

    host: str = ""
    path_prefix: str = ""
    methods: frozenset[str] = frozenset()
    methods_except: frozenset[str] = frozenset()  # every method but these

    def matches_host(self, hostname: str) -> bool:
        """Whether a canonical host name (``Original.hostname``) falls under this rule."""
        return not self.host or _host_matches(hostname, self.host.lower().rstrip("."))

    def matches_method(self, method: str) -> bool:
        """Whether a method falls under this rule (``load_rules`` added ``HEAD`` next to ``GET``)."""
        return (not self.methods or method in self.methods) and method not in self.methods_except


class Rules(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The rules file: the first matching rule wins; no match means the default policy."""

    rules: tuple[Rule, ...] = ()

    def for_request(self, original: Original) -> Policy | None:
        """The policy for a request, or ``None`` if its readings disagree (refuse it).

        Each reading of the path (``canonical.readings``), matched as written and case-folded,
        must select the same rule: a path that one part behind the proxy could read as
        ``/admin/x`` and another as something else is judged by neither.
        Each method the request may be run as (``Original.methods``: an override names more) must
        select the same rule too.
        """
        hostname = original.hostname
        on_host = [rule for rule in self.rules if rule.matches_host(hostname)]
        chosen: Policy | None = None
        for method in original.methods:
            candidates = [rule for rule in on_host if rule.matches_method(method)]
            for path in original.paths:
                # Prefixes are lower case (load_rules), so a lower-case path is its own fold.
                for text in (path, path.lower()) if path != path.lower() else (path,):
                    rule = next((r for r in candidates if _prefix_matches(text, r.path_prefix)), DEFAULT)
                    if chosen is None:
                        chosen = rule
                    elif rule is not chosen:
                        return None
        return chosen


def load_rules(path: str, *, organizations: bool = False) -> Rules:
    """Read a rules file (``.toml`` or ``.json``); ``organizations``: as ``parse_rules``.

    Raises:
        ValueError: the file can't be read or doesn't have the shape above (the message says where).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return parse_rules(raw, path, organizations=organizations)


def parse_rules(raw: bytes, path: str, *, organizations: bool = False) -> Rules:
    """The rules in a rules file's bytes; ``path`` names the format (``.json``, else TOML) and the file in errors.

    ``organizations``: whether ``allowed_org_roles`` can be met; else a rule naming it is refused.

    Raises:
        ValueError: the bytes don't have the shape above (the message says where).
    """
    try:
        rules = msgspec.json.decode(raw, type=Rules) if path.endswith(".json") else msgspec.toml.decode(raw, type=Rules)
    except (msgspec.DecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except RecursionError as exc:  # the decoders' depth limit is the stack's
        raise ValueError(f"{path}: nested too deeply") from exc
    # A rule that can never match (or matches less than it names) is a silent hole: the requests
    # it meant fall to the default.
    checked = []
    for i, rule in enumerate(rules.rules):
        where = f"{path}: rules[{i}]"
        if rule.path_prefix and not rule.path_prefix.startswith("/"):
            raise ValueError(f"{where}.path_prefix must start with '/'")
        if rule.path_prefix != rule.path_prefix.lower():
            raise ValueError(f"{where}.path_prefix must be lower case (paths are also matched case-folded)")
        if any(canonical.method(m) is None for m in rule.methods | rule.methods_except):
            raise ValueError(f"{where}.methods must be upper-case methods (POST, not post)")
        if rule.methods and rule.methods_except:
            raise ValueError(f"{where}: methods or methods_except, not both")
        name = rule.host.removeprefix(".").lower().rstrip(".")
        if rule.host and canonical.hostname(name) != name:  # the port is dropped before comparing
            raise ValueError(f"{where}.host is not a host name (no port, no path)")
        org_roles = None if isinstance(rule.allowed_org_roles, msgspec.UnsetType) else rule.allowed_org_roles
        org_condition(org_roles, f"{where}.allowed_org_roles", organizations=organizations)
        if "GET" in rule.methods:  # HEAD runs the GET handler everywhere
            rule = msgspec.structs.replace(rule, methods=rule.methods | {"HEAD"})  # noqa: PLW2901
        checked.append(rule)
    return Rules(tuple(checked))


def rules_file_problems(settings: Settings) -> list[str]:
    """What is wrong with ``GATEWAY_RULES_FILE`` (empty without one, or when it loads).

    The HTTP adapter's own check, run with config's wherever settings are loaded to serve
    (``gateway serve``, ``gateway check-config``, each worker's ``create_app``): a bad file stops
    the gateway before it serves, listed with every other problem.
    """
    if not settings.rules_file:
        return []
    try:
        load_rules(settings.rules_file, organizations=settings.organizations == "on")
    except ValueError as exc:
        return [f"GATEWAY_RULES_FILE: {exc}"]
    return []
