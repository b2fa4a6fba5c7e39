"""The dense cache entry, and the indexes that find entries by token hash and by user.

One ``Entry`` per cached credential key: the session, its token's hash, and what a hit sends,
rendered once. The user's fields are shared by that user's entries (``sharing_user``: one dict
per user while any entry refers to it), and an index holds a key itself, not a set, while it names one
key (the usual case: one spelling per token, a few sessions per user), so a cached session costs
no dict or set that a hit does not read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from gateway.core.sessions import Session

__all__ = ["Entry", "index_add", "index_discard", "index_keys", "sharing_user"]


class Entry:
    """What the LRU holds for a credential key: a valid session, its token's hash, and its answers.

    ``headers`` (``/validate``'s identity headers), ``identity`` (``/v1/validate``'s JSON body)
    and ``answer`` (get-session's JSON body, with the token the key proves) belong to the HTTP
    adapter: each is rendered by the first hit that sends it and reused by every later one; the
    core never reads them. They live and die with the entry, so nothing rendered from a session
    outlives its eviction or revocation, and an entry's answers are for its own key's token only.
    """

    __slots__ = ("answer", "digest", "headers", "identity", "session")

    def __init__(self, session: Session, digest: str) -> None:
        self.session = session
        self.digest = digest
        self.headers: list[tuple[str, str]] | None = None
        self.identity: bytes | None = None
        self.answer: bytes | None = None


# An index value: the one key it names, or the set of them when there are several.
Keys = str | set[str]


def index_add(index: dict[str, Keys], name: str, key: str) -> None:
    """Index ``key`` under ``name``."""
    keys = index.get(name)
    if keys is None or keys == key:
        index[name] = key
    elif isinstance(keys, str):
        index[name] = {keys, key}
    else:
        keys.add(key)


def index_discard(index: dict[str, Keys], name: str, key: str) -> None:
    """Drop ``key`` from under ``name`` (and ``name`` once it indexes nothing)."""
    keys = index.get(name)
    if keys is None:
        return
    if isinstance(keys, str):
        if keys == key:
            del index[name]
        return
    keys.discard(key)
    if len(keys) == 1:
        index[name] = next(iter(keys))


def index_keys(index: dict[str, Keys], name: str) -> tuple[str, ...]:
    """The keys indexed under ``name`` (a copy: the caller may evict them meanwhile)."""
    keys = index.get(name)
    if keys is None:
        return ()
    return (keys,) if isinstance(keys, str) else tuple(keys)


def sharing_user(session: Session, other: Entry | None) -> Session:
    """``session``, with the user dict of ``other`` (a cached session of the same user) if equal.

    A user's sessions then hold one dict between them. Fields that differ (the user changed
    between the two reads) are kept apart: sharing never changes what an entry answers.
    """
    if other is None:
        return session
    user = other.session.user
    if user is session.user or user != session.user:
        return session
    return msgspec.structs.replace(session, user=user)
