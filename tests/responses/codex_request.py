"""Request bodies shaped like what Codex CLI 0.171.0 sends to ``POST /v1/responses`` (see
../shared/AGENTS.md; re-measured with the real CLI against the fake upstream): developer
items, an ``<environment_context>`` user item, the user's prompt last, top-level tools, and
the per-run values (item ids, ``prompt_cache_key``, ``client_metadata``) a new run changes."""

from __future__ import annotations

import copy
import uuid
from typing import Any

PROMPT = "How do I center a div in CSS?"
ENVIRONMENT = (
    "<environment_context>\n  <cwd>/work/demo</cwd>\n  <shell>bash</shell>\n"
    "  <current_date>2026-12-01</current_date>\n  <timezone>Etc/UTC</timezone>\n</environment_context>"
)
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "exec_command", "description": "Runs a command in a PTY.", "strict": False,
     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}, "required": ["cmd"]}},
    {"type": "web_search", "external_web_access": False},
]
TITLE_FORMAT = {
    "type": "json_schema", "name": "codex_output_schema", "strict": True,
    "schema": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"],
               "additionalProperties": False},
}


def _id() -> str:
    return f"msg_{uuid.uuid4()}"


def message(role: str, *texts: str) -> dict[str, Any]:
    return {"type": "message", "id": _id(), "role": role, "content": [{"type": "input_text", "text": t} for t in texts]}


def codex_request(prompt: str = PROMPT, *, environment: str = ENVIRONMENT, stream: bool = True) -> dict[str, Any]:
    """A fresh run's request: new item ids, prompt_cache_key and client_metadata each call."""
    session = str(uuid.uuid4())
    return {
        "model": "gpt-5-codex",
        "input": [
            message("developer", "You are a coding agent running in the Codex CLI, a terminal-based coding assistant."),
            message("developer", "<permissions instructions>Filesystem sandboxing: workspace-write.</permissions instructions>"),
            message("user", environment),
            message("user", prompt),
        ],
        "tools": copy.deepcopy(TOOLS),
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "store": False,
        "stream": stream,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": session,
        "client_metadata": {"session_id": session, "turn_id": str(uuid.uuid4()),
                            "x-codex-turn-metadata": f'{{"turn_started_at_unix_ms": {uuid.uuid4().int % 10**13}}}'},
    }


def title_request(prompt: str = PROMPT) -> dict[str, Any]:
    """Codex's title call: the same prompt, with a JSON output schema."""
    request = codex_request(prompt)
    request["input"] = [message("developer", "Generate a concise, single-line task title for the user's request."),
                        message("user", prompt)]
    request["text"] = {"format": copy.deepcopy(TITLE_FORMAT)}
    del request["tools"]
    return request
