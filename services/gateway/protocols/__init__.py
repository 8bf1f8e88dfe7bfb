"""One adapter per client protocol over one shared base (see base.py)."""

from __future__ import annotations

from services.gateway.protocols.anthropic_messages import AnthropicMessages
from services.gateway.protocols.base import ParsedRequest, ProtocolAdapter, StreamAssembly, UpstreamName
from services.gateway.protocols.openai_chat import ChatCompletions
from services.gateway.protocols.openai_responses import Responses


def all_protocols() -> tuple[ProtocolAdapter, ...]:
    """Every protocol the gateway serves, each once; the app builds its routes from these."""
    return (ChatCompletions(), AnthropicMessages(), Responses())


__all__ = ["ParsedRequest", "ProtocolAdapter", "StreamAssembly", "UpstreamName", "all_protocols"]
