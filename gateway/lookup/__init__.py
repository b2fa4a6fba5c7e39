"""The decision core: tiers of caches in front of a session source, revocation bookkeeping, the verdict.

Knows its sources and caches only as protocols (``protocols``: ``SessionSource``, ``SharedCache``,
``Invalidator``); no I/O library. ``tiers`` composes the rest: ``flights`` (one fetch per token
in flight), ``batching`` (one bulk call per loop tick), ``revocations`` (what was revoked lately,
and the local invalidation count), ``outbox`` (revocations sent on to the shared cache in
batches); ``decision`` turns a credential into a verdict through them.
"""
