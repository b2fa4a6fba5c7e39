"""The decision core: tiers of caches in front of a session source, revocation bookkeeping, the verdict.

Knows its sources and caches only as protocols (``SessionSource``, ``SharedCache``); no I/O library.
"""
