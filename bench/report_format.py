"""Formatting helpers shared by the parts of the benchmark report.

Numbers are printed with thousands separators and a fixed number of digits;
a missing number is "n/a", never a crash, so a partial run still renders.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fmt", "get", "signed"]


def get(data: dict[str, Any], path: str) -> Any:
    """The value at a dotted key path (``proxy.c16.throughput_ratio``), or None."""
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}{suffix}"
    return str(value)


def signed(value: float | None) -> str:
    """A difference with its sign, two decimals (``+3.32``)."""
    return "n/a" if value is None else f"{value:+.2f}"
