"""gitsync: a GitOps agent for Ray Serve on Kubernetes.

The pipeline is source → manifests → diff → plan → rollout → report (docs/architecture.md).
The pure core (model, kuberay, manifests, diff, plan, health …) does no I/O;
tests/test_layering.py keeps it that way.
"""

__version__ = "0.1.0"
