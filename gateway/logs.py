"""Logging set-up, shared by the command line and each worker."""

from __future__ import annotations

import logging


def configure_logging(level: str = "info") -> None:
    """Log to stderr at ``level`` (the gateway's own loggers live under ``gateway``)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("gateway").setLevel(level.upper())
