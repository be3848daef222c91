"""The Kubernetes API client of the services that talk to it (the ``kube`` extra: lightkube)."""

from __future__ import annotations

import logging

from lightkube import AsyncClient, ConfigError, KubeConfig

log = logging.getLogger(__name__)

# lightkube's HTTP client logs every request at info: one line per watch event is noise.
_CHATTY_LOGGERS = ("httpx2", "httpcore2")


def api_client(program: str, log_level: str) -> AsyncClient | None:
    """A client from the in-cluster configuration, else ``KUBECONFIG``; None (logged) when
    neither is usable. Writes are attributed to ``program`` (the field manager)."""
    if log_level != "debug":
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        config = KubeConfig.from_env()
    except (ConfigError, OSError) as error:
        log.error(
            "no Kubernetes API configuration: not in a cluster and no usable KUBECONFIG",
            extra={"error": str(error)},
        )
        return None
    return AsyncClient(config, field_manager=program)
