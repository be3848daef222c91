"""The ``gvirtus-device-plugin`` command (also ``python -m gvirtus_kai_device_plugin``).

The plugin speaks gRPC over unix sockets and plain HTTP for ``/healthz`` and ``/metrics``: it never
uses OpenSSL (grpc carries its own TLS library, unused here). Yet ``asyncio`` imports ``ssl`` and
``secrets``/``hmac`` import ``_hashlib`` just to offer them, and each loads OpenSSL's libcrypto:
about 4.6 MiB of the process's 50 MiB memory budget. Marking the three modules as unavailable before
anything imports them makes the standard library take its paths for Python builds without OpenSSL
(asyncio without TLS support, hashlib's built-in hash functions). An import of ``ssl`` added later
fails at start-up, which the process tests catch.
"""

from __future__ import annotations

import sys

# A None entry in sys.modules makes ``import name`` raise ImportError (documented import system
# behaviour). setdefault: a module something imported already is left alone.
WITHOUT_OPENSSL = ("ssl", "_ssl", "_hashlib")


def main() -> None:
    for name in WITHOUT_OPENSSL:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    from gvirtus_kai_device_plugin.main import main as run

    run()


if __name__ == "__main__":
    main()
