"""gitsync: a GitOps agent for Ray Serve on Kubernetes.

The pipeline is source → manifests → diff → plan → rollout → report (see docs/architecture
in the README). The pure core (model, kuberay, manifests, diff, plan, health) does no I/O;
an import-linter contract in pyproject.toml keeps it that way.
"""

__version__ = "0.1.0"
