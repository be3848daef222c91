"""gRPC channels to the kubelet's unix sockets, and errors said in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

# grpc shares subchannels between channels to the same address, and a shared subchannel that
# failed to connect sits out a reconnect backoff (1 s, growing): a fresh channel would then fail at
# once although a new kubelet is listening. A local pool gives each attempt a fresh connection.
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def unix_channel(socket_path: Path) -> Any:
    """A channel to ``socket_path`` (a grpc.aio.Channel: grpc ships no type hints)."""
    return grpc.aio.insecure_channel(f"unix://{socket_path}", options=CHANNEL_OPTIONS)


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"
