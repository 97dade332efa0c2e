"""Small helpers for what the commands print."""

from __future__ import annotations


def counted(number: int, noun: str) -> str:
    """``1 peer``, ``2 peers``: a count with its noun, plural unless the count is one."""
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}s"
