"""Print every REFLEX_* setting as Markdown tables, one per process (name, default, what it
does), straight from ``reflex.settings``, so the README's tables are regenerated rather than
retyped. A variable shared by several processes is listed under the first that reads it."""

from __future__ import annotations

from enum import Enum

from reflex.settings import PROCESSES


def rows() -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for process in PROCESSES:
        fresh = [(env, field) for env, field in process.fields() if env not in seen]
        if not fresh:
            continue
        out += ["", f"**{process.title}**", "", "| variable | default | what it does, and the trade-off |", "|---|---|---|"]
        for env, field in fresh:
            seen.add(env)
            default = field.default
            if isinstance(default, Enum):
                default = default.value
            shown = "unset" if default is None else f"`{default}`"
            description = (field.description or "").replace("|", "\\|")
            out.append(f"| `{env}` | {shown} | {description} |")
    return out[1:]


if __name__ == "__main__":
    print("\n".join(rows()))
