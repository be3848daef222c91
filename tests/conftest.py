"""Fixtures every suite may use. The real control plane is session-wide and starts only when a
test asks for ``cluster``."""

from tests.cluster.fixtures import cluster

__all__ = ["cluster"]
