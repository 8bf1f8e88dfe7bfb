"""Property tests (hypothesis) for the Messages adapter's canonical form and context.

- Changing a per-run field (``metadata``, ``stream``, ``cache_control`` markers added, moved
  or removed wherever the API lets them sit) never changes the exact key.
- Changing, adding or removing anything else, at any depth, always does.
- Rewording the question never changes the context; changing anything around it does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from services.gateway.errors import GatewayError
from services.gateway.protocols.anthropic_messages import canonical_request as canonical
from services.gateway.protocols.anthropic_messages import (
    context_of,
    semantic_question,
    validate_messages_request,
)

Path = tuple[str | int, ...]

MARKERS = st.sampled_from([None, {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
# names the adapter treats specially at the top level: extra fields never use them
RESERVED = {"metadata", "stream", "cache_control", "model", "max_tokens", "messages", "system", "tools"}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NAMES, inner, max_size=3),
    max_leaves=8,
)
TEXT_BLOCK = st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=20))
TOOL_USE = st.builds(lambda i, n, a: {"type": "tool_use", "id": i, "name": n, "input": a},
                     NAMES, NAMES, st.dictionaries(NAMES, JSON, max_size=3))
TOOL_RESULT = st.builds(lambda i, c: {"type": "tool_result", "tool_use_id": i, "content": c},
                        NAMES, st.lists(TEXT_BLOCK, min_size=1, max_size=2))
BLOCKS = st.lists(TEXT_BLOCK | TOOL_USE | TOOL_RESULT, min_size=1, max_size=3)
MESSAGE = st.builds(lambda r, c: {"role": r, "content": c}, st.sampled_from(["user", "assistant", "system"]),
                    BLOCKS | st.text(max_size=20))
TOOL = st.builds(lambda n, d, s: {"name": n, "description": d, "input_schema": {"type": "object", "properties": s}},
                 NAMES, st.text(max_size=20), st.dictionaries(NAMES, JSON, max_size=3))
REQUEST = st.builds(
    lambda model, max_tokens, system, messages, tools, extra: {
        "model": model, "max_tokens": max_tokens, "system": system, "messages": messages, "tools": tools,
        **{k: v for k, v in extra.items() if k not in RESERVED},
    },
    st.text(min_size=1, max_size=10), st.integers(1, 10**5), st.lists(TEXT_BLOCK, max_size=3),
    st.lists(MESSAGE, min_size=1, max_size=4), st.lists(TOOL, max_size=3), st.dictionaries(NAMES, JSON, max_size=3),
)


def marker_slots(request: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every object on which the API accepts a cache_control marker."""
    yield request
    yield from request["tools"]
    yield from request["system"]
    for message in request["messages"]:
        yield message
        if isinstance(message["content"], list):
            for block in message["content"]:
                yield block
                if block["type"] == "tool_result":
                    yield from block["content"]


def per_run_variant(request: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    variant = copy.deepcopy(request)
    for slot in marker_slots(variant):
        marker = data.draw(MARKERS)
        if marker is None:
            slot.pop("cache_control", None)
        else:
            slot["cache_control"] = marker
    metadata = data.draw(st.none() | st.builds(lambda s: {"user_id": s}, st.text(max_size=30)) | JSON)
    if metadata is None:
        variant.pop("metadata", None)
    else:
        variant["metadata"] = metadata
    stream = data.draw(st.sampled_from([None, True, False]))
    if stream is None:
        variant.pop("stream", None)
    else:
        variant["stream"] = stream
    return variant


def paths(value: Any, prefix: Path = ()) -> Iterator[Path]:
    """Every position in a JSON value (containers and leaves), except the root."""
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def semantic_paths(request: dict[str, Any]) -> list[Path]:
    """Every position in the request except the per-run ones (metadata, stream, and the
    cache_control markers where the API puts them, with what is inside them)."""
    slots = {id(slot) for slot in marker_slots(request)}
    skipped: list[Path] = [("metadata",), ("stream",)]
    for path in paths(request):
        parent, step = at(request, path)
        if step == "cache_control" and id(parent) in slots:
            skipped.append(path)
    return [p for p in paths(request) if not any(p[:len(s)] == s for s in skipped)]


def changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if value + 1 != value else -value  # floats past 2**53 absorb the + 1
    if isinstance(value, str):
        return value + "x"
    if value is None:
        return 0
    if isinstance(value, list):
        return [*value, 0]
    return {**value, "zz_added": 0}


def at(value: Any, path: Path) -> tuple[Any, str | int]:
    for step in path[:-1]:
        value = value[step]
    return value, path[-1]


@settings(max_examples=150, deadline=None)
@given(request=REQUEST, data=st.data())
def test_per_run_fields_never_change_the_key(request: dict[str, Any], data: st.DataObject) -> None:
    first, second = per_run_variant(request, data), per_run_variant(request, data)
    assert canonical(first) == canonical(second) == canonical(request)


@settings(max_examples=150, deadline=None)
@given(request=REQUEST, data=st.data())
def test_changing_anything_else_changes_the_key(request: dict[str, Any], data: st.DataObject) -> None:
    base = per_run_variant(request, data)
    path = data.draw(st.sampled_from(semantic_paths(base)))
    edited = copy.deepcopy(base)
    parent, step = at(edited, path)
    if data.draw(st.booleans()):
        parent[step] = changed(parent[step])
    elif isinstance(parent, dict):
        del parent[step]  # a field removed
    else:
        parent.insert(step, copy.deepcopy(parent[step]))  # an item repeated
    assert canonical(edited) != canonical(base), path


@settings(max_examples=100, deadline=None)
@given(request=REQUEST, question=st.text(min_size=1, max_size=40).filter(lambda t: t.strip()),
       reworded=st.text(min_size=1, max_size=40).filter(lambda t: t.strip()), data=st.data())
def test_the_question_is_all_that_may_differ_within_one_context(
    request: dict[str, Any], question: str, reworded: str, data: st.DataObject
) -> None:
    def asking(text: str) -> dict[str, Any]:
        body = copy.deepcopy(request)
        body["messages"].append({"role": "user", "content": [
            {"type": "text", "text": "<system-reminder>date</system-reminder>"}, {"type": "text", "text": text}]})
        body["messages"].append({"role": "system", "content": "trailing"})
        return per_run_variant(body, data)

    one, two = asking(question), asking(reworded)
    assert semantic_question(one) == question and semantic_question(two) == reworded
    assert context_of(one) == context_of(two)
    # and anything around the question splits the context
    asked = ("messages", len(one["messages"]) - 2, "content", 1, "text")
    path = data.draw(st.sampled_from([p for p in semantic_paths(one) if p != asked]))
    edited = copy.deepcopy(one)
    parent, step = at(edited, path)
    parent[step] = changed(parent[step])
    assume(valid(edited))  # the context is only ever taken of a request that passed validation
    assert context_of(edited) != context_of(one), path


def valid(request: dict[str, Any]) -> bool:
    try:
        validate_messages_request(request)
    except GatewayError:
        return False
    return True
