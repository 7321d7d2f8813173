"""End-to-end tooling: a real local Kubernetes control plane and the tests that run on it."""
