"""gRPC keepalive, agreed between the gateway's channels and the model servers.

The gateway pings an idle channel so that a peer that vanished without a FIN (a node gone) is
found before the next request pays for it. A server only tolerates that if it permits pings
without calls and at least that often; gRPC's server defaults (no pings without calls, at most
one every 5 minutes) answer a 30 s pinger with GOAWAY ENHANCE_YOUR_CALM "too_many_pings" after
about two idle minutes, and the connection, with any call on it, is dropped. Both sides take
their options from here, so they cannot drift apart.
"""

from __future__ import annotations

# How often an idle gateway channel pings, and how long it waits for the answer.
PING_INTERVAL_MS = 30_000
PING_TIMEOUT_MS = 10_000


def client_options(ping_interval_ms: int = PING_INTERVAL_MS) -> tuple[tuple[str, int], ...]:
    return (
        ("grpc.keepalive_time_ms", ping_interval_ms),
        ("grpc.keepalive_timeout_ms", PING_TIMEOUT_MS),
        # ping while no call is open: idle is exactly when a dead peer goes unnoticed
        ("grpc.keepalive_permit_without_calls", 1),
        # no cap on pings between data frames (the default, 2, would stop idle pinging)
        ("grpc.http2.max_pings_without_data", 0),
    )


def server_options(ping_interval_ms: int = PING_INTERVAL_MS) -> tuple[tuple[str, int], ...]:
    return (
        ("grpc.keepalive_permit_without_calls", 1),
        # accept pings twice as often as clients send them, so jitter never counts as a strike
        # (the C-core name of GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)
        ("grpc.http2.min_ping_interval_without_data_ms", ping_interval_ms // 2),
        ("grpc.http2.max_ping_strikes", 2),
    )
