"""The Redis adapters: the shared tier, and Better Auth's own secondary storage as a session source.

``tier`` (the ``SharedCache``: batching, revocation, degradation) over ``reads`` (one ``MGET`` per
loop tick, on ``pipe``: one pipelined hiredis connection), ``values`` (the signed value format),
``generation`` (the counter that retires values) and ``scripts`` (the Lua that keeps revocations
race-free); ``secondary_storage`` (a ``SessionSource``) and ``keyspace`` (its
``Invalidator``-driven listener); ``client`` (clients for standalone, Cluster and Sentinel, and
Redis's failures raised as the core's errors) and ``backoff`` (jittered reconnects) for both.
"""
