"""Metrics and logs: counters cheap enough for the hit path, decision lines without tokens."""
