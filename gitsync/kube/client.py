"""The Kubernetes API client, built once per process with a sized connection pool."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import urllib3
from kubernetes import client, config

from gitsync.errors import ClusterUnreachable, ConfigError

P = ParamSpec("P")
R = TypeVar("R")

# The official client's urllib3 pool defaults to 5 x cores connections, and logs a warning
# and waits when a wave applies more services at once than that.
POOL_SIZE = 32


def api_client(kubeconfig: Path | None = None, context: str | None = None) -> client.ApiClient:
    """From ``kubeconfig`` (or $KUBECONFIG / ~/.kube/config), else the in-cluster
    service account."""
    configuration = client.Configuration()
    try:
        if kubeconfig is not None or context is not None or not _in_cluster():
            config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None,
                context=context,
                client_configuration=configuration,
            )
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as exc:
        where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
        raise ConfigError(f"cannot load a Kubernetes config from {where}: {exc}") from None
    configuration.connection_pool_maxsize = POOL_SIZE
    return client.ApiClient(configuration)


def _in_cluster() -> bool:
    return Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()


def reaching_the_api(call: Callable[P, R]) -> Callable[P, R]:
    """Turns "the API server did not answer" (the client's urllib3 errors after its own
    retries) into :class:`ClusterUnreachable`; answers with a status stay ApiExceptions."""

    @functools.wraps(call)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except urllib3.exceptions.HTTPError as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ClusterUnreachable(
                f"the Kubernetes API server is unreachable: {reason}; check the kubeconfig "
                "(or the in-cluster service account) and that the API server is up"
            ) from None

    return wrapper
