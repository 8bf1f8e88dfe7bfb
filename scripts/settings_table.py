"""Print every REFLEX_* setting as a Markdown table (name, default, what it does), straight
from ``reflex.config.Settings``, so the README's table is regenerated rather than retyped."""

from __future__ import annotations

from enum import Enum

from reflex.config import Settings


def rows() -> list[str]:
    out = ["| variable | default | what it does, and the trade-off |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, Enum):
            default = default.value
        shown = "unset" if default is None else f"`{default}`"
        description = (field.description or "").replace("|", "\\|")
        out.append(f"| `REFLEX_{name.upper()}` | {shown} | {description} |")
    return out


if __name__ == "__main__":
    print("\n".join(rows()))
