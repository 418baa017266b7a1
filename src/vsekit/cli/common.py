"""Helpers shared by the command modules."""

from __future__ import annotations


def comma_list(text: str) -> list[str]:
    """The non-empty items of a comma-separated option ("a, b,," -> ["a", "b"])."""
    return [item.strip() for item in text.split(",") if item.strip()]


def version() -> str:
    try:
        from importlib.metadata import version

        return version("vsekit")
    except Exception:
        return "unknown"
