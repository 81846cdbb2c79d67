"""The test bed: real kube-apiserver + etcd built from Go modules, and a KubeRay simulator.

Used by the pytest session fixtures (tests/conftest.py) and by ``make demo``. Nothing here is
part of the agent; it stands in for a cluster the way controller-runtime's envtest does.
"""
