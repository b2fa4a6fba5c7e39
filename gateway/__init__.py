"""A high-throughput validation service for Better Auth sessions."""

__version__ = "0.1.0"
