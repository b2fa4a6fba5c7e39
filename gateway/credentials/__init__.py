"""Credentials: cookies, bearer tokens, Better Auth's cookie cache and JWTs, parsed and verified.

No I/O: key sources are passed in.
"""
