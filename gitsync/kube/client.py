"""The Kubernetes API client, built once per process with a sized connection pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client import ApiClient, ApiException, rest

from gitsync.errors import ConfigError
from gitsync.kube.failures import reaching_the_api

# ApiClient and ApiException are the client's names the rest of gitsync may hold (an API
# client passed down, a raw answer caught where no retry applies): only kube/ imports
# ``kubernetes`` (the import contracts in pyproject.toml).
__all__ = [
    "POOL_SIZE",
    "REQUEST_TIMEOUT",
    "ApiClient",
    "ApiException",
    "api_client",
    "reaching_the_api",
]

# The official client's urllib3 pool defaults to 5 x cores connections, and logs a warning
# and waits when a wave applies more services at once than that.
POOL_SIZE = 32
# (connect, read) seconds for every request that does not set its own (a watch does). The
# official client sets none: a hung API server, or one waiting on a stopped etcd, would hold
# the agent's pass forever. The API server gives up on a request after 60 s itself.
REQUEST_TIMEOUT = (5.0, 20.0)
# urllib3's own retries, under gitsync's (kube/failures.py): a refused connection (or a pooled
# one the server closed) is tried again at once, twice; nothing else. Its default (3 retries)
# also resends a GET that timed out, and obeys a 429's Retry-After on a GET — multiplying
# gitsync's attempts: a hung API server cost 4 reads per attempt, a throttled one 4 requests.
TRANSPORT_RETRIES = urllib3.Retry(
    total=2, connect=2, read=0, status=0, other=0, redirect=0, respect_retry_after_header=False
)


def api_client(
    kubeconfig: Path | None = None,
    context: str | None = None,
    timeout: tuple[float, float] = REQUEST_TIMEOUT,
) -> client.ApiClient:
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
    configuration.retries = TRANSPORT_RETRIES
    return with_timeouts(client.ApiClient(configuration), timeout)


class _TimedRest(rest.RESTClientObject):  # type: ignore[misc]
    def __init__(self, configuration: client.Configuration, timeout: tuple[float, float]) -> None:
        super().__init__(configuration)
        self.timeout = timeout

    def request(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return super().request(*args, _request_timeout=_request_timeout or self.timeout, **kwargs)


def with_timeouts(
    api: client.ApiClient, timeout: tuple[float, float] = REQUEST_TIMEOUT
) -> client.ApiClient:
    """``api`` with ``timeout`` (connect, read) on every request that names no timeout."""
    api.rest_client.pool_manager.clear()
    api.rest_client = _TimedRest(api.configuration, timeout)
    return api


def _in_cluster() -> bool:
    return Path("/var/run/secrets/kubernetes.io/serviceaccount/token").exists()
