"""The Kubernetes API client, built once per process with a sized connection pool."""

from __future__ import annotations

from pathlib import Path

from kubernetes import client, config

from gitsync.errors import ConfigError

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
