"""The core's values and rules: sessions, reasons, Better Auth's fields and JSON, the LRU, the errors.

Imports nothing else of the gateway and does no I/O.
"""
