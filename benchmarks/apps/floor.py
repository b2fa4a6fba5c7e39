"""The floor: a bare granian RSGI app answering 200 with no work (docs/performance.md §1)."""

from __future__ import annotations

from typing import Any

_EMPTY: list[tuple[str, str]] = []


async def app(_scope: Any, proto: Any) -> None:
    """Answer 200, empty."""
    proto.response_empty(200, _EMPTY)
