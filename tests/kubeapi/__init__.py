"""A fake Kubernetes API server for controller tests: ``FakeKubeApi`` and its pytest fixtures."""
