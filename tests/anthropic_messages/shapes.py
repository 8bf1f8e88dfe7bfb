"""Request bodies shaped like Claude Code's, as ``../shared/AGENTS.md`` records them (and as
tests/agents captures from the real CLI): the main ``-p`` call and the title call.

The texts are short stand-ins; the structure is the CLI's: three system text blocks (the
billing header with its prompt-derived suffix, the identity line, the main prompt with the
environment), ``cache_control`` markers on some blocks, a user message with a
``<system-reminder>`` block then the prompt, a trailing ``system``-role message, and
``metadata.user_id`` holding a per-run session id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

EPHEMERAL = {"type": "ephemeral"}
MODEL = "claude-opus-4-8"
REMINDER = (
    "<system-reminder>\nAs you answer the user's questions, you can use the following context:\n"
    "# currentDate\nToday's date is 2026-12-01.\n</system-reminder>\n\n"
)


def billing_header(prompt: str, version: str = "2.1.197") -> str:
    # the CLI derives 3 hex digits from the prompt; any stable function shows the shape
    suffix = hashlib.sha256(prompt.encode()).hexdigest()[:3]
    return f"x-anthropic-billing-header: cc_version={version}.{suffix}; cc_entrypoint=sdk-cli;"


def user_id(session: str) -> str:
    return json.dumps({"device_id": "e0d7" * 16, "account_uuid": "", "session_id": session})


def tools(count: int = 3) -> list[dict[str, Any]]:
    return [
        {
            "name": f"Tool{i}",
            "description": f"Tool number {i}: does one thing well.",
            "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        }
        for i in range(count)
    ]


def main_call(prompt: str, *, session: str = "run-1", git_status: str = "Status:\n(clean)",
              reminder: str = REMINDER, stream: bool = True) -> dict[str, Any]:
    """Claude Code's main `-p` call."""
    return {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": reminder},
                {"type": "text", "text": prompt, "cache_control": EPHEMERAL},
            ]},
            {"role": "system", "content": "Available agent types for the Agent tool:\n- general-purpose: ..."},
        ],
        "system": [
            {"type": "text", "text": billing_header(prompt)},
            {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK.",
             "cache_control": EPHEMERAL},
            {"type": "text", "text": f"You are an interactive agent.\n<env>\nWorking directory: /tmp/repo\n"
                                     f"</env>\ngitStatus: {git_status}", "cache_control": EPHEMERAL},
        ],
        "tools": tools(),
        "metadata": {"user_id": user_id(session)},
        "max_tokens": 64000,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stream": stream,
    }


TITLE_SYSTEM = (
    "Generate a concise, sentence-case title (3-7 words) that captures the main topic or goal of "
    "this coding session.\n\nReturn JSON with a single \"title\" field."
)
TITLE_FORMAT = {
    "type": "json_schema",
    "schema": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"],
               "additionalProperties": False},
}


def title_text(prompt: str) -> str:
    return (f"<session>\n{prompt}\n</session>\n\nWrite the title in the language the user wrote in, "
            "regardless of the language of the examples above.")


def title_call(prompt: str, *, session: str = "run-1", stream: bool = True) -> dict[str, Any]:
    """Claude Code's title call: no tools, thinking disabled, a JSON schema output format."""
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": [{"type": "text", "text": title_text(prompt)}]}],
        "system": [
            {"type": "text", "text": billing_header(prompt)},
            {"type": "text", "text": "You are a Claude agent, built on Anthropic's Claude Agent SDK."},
            {"type": "text", "text": TITLE_SYSTEM},
        ],
        "tools": [],
        "metadata": {"user_id": user_id(session)},
        "max_tokens": 64000,
        "thinking": {"type": "disabled"},
        "output_config": {"effort": "high", "format": TITLE_FORMAT},
        "stream": stream,
    }
