"""The entry points: ``gateway serve | check-config | install-triggers | demo``."""
