"""The pod-spec policy: what a RayService may ask KubeRay to run. Pure.

KubeRay creates the pods, so gitsync's own narrow RBAC limits nothing about them: whoever can
write a manifest gitsync applies can run any pod spec in the target namespace. Previews run
code nobody has reviewed yet, so they get this policy by default (``previews.policy``);
environments can turn it on (``environments[].policy``).

Every pod template of a RayService is checked — the head group, every worker group, their
``initContainers`` and ``ephemeralContainers``, and the autoscaler sidecar
(``autoscalerOptions``) — for the fields that reach the node or the namespace's secrets:

- ``privileged``: ``privileged``, ``allowPrivilegeEscalation``, Windows ``hostProcess``;
- ``hostNamespaces``: ``hostNetwork``, ``hostPID``, ``hostIPC``;
- ``hostPorts``: ``ports[].hostPort``;
- ``hostPath``: ``hostPath`` volumes;
- ``secrets``: Secret volumes, projected Secret sources, CSI volumes that fetch secrets,
  ``envFrom[].secretRef`` and ``env[].valueFrom.secretKeyRef``;
- ``serviceAccount``: a ``serviceAccountName`` other than ``default``,
  ``automountServiceAccountToken: true``;
- ``capabilities``: ``capabilities.add`` beyond ``NET_BIND_SERVICE`` (what Pod Security
  ``restricted`` allows).

A violation is refused (a problem with ``file:line``: nothing of the revision is applied),
unless its category is listed in ``strip``, in which case the field is removed and the
manifest applied without it. Refusing is the default because stripping silently changes what
runs. Images and ``runtime_env`` URLs (``working_dir``, ``py_modules``, ``pip``/``uv``
URLs and options, ``conda`` channels) are checked against optional allow-lists and can only
be refused: there is nothing sensible to strip them to.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from gitsync.manifests.yamldoc import dotted

Path = tuple[str | int, ...]

CATEGORIES = (
    "privileged",
    "hostNamespaces",
    "hostPorts",
    "hostPath",
    "secrets",
    "serviceAccount",
    "capabilities",
)
ALLOWED_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
SECRETS_CSI_DRIVER = "secrets-store.csi.k8s.io"  # mounts cloud secret managers' secrets
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


@dataclass(frozen=True)
class PodPolicy:
    enabled: bool = True
    strip: frozenset[str] = frozenset()  # categories removed instead of refused
    images: tuple[str, ...] = ()  # allow-list of image globs; empty: any image
    runtime_env: tuple[str, ...] = ()  # allow-list of runtime_env URL globs; empty: any


@dataclass(frozen=True)
class Violation:
    """One field the policy does not allow, at ``path`` in the manifest."""

    category: str  # one of CATEGORIES, or "images" / "runtimeEnv"
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{dotted(self.path)}: {self.message}"


@dataclass(frozen=True)
class PolicyResult:
    manifest: dict[str, Any]  # with the stripped fields removed
    refused: tuple[Violation, ...]
    stripped: tuple[Violation, ...]


def enforce(manifest: Mapping[str, Any], policy: PodPolicy) -> PolicyResult:
    """The manifest as the policy lets it run, what it refuses, and what it removed."""
    obj = copy.deepcopy(dict(manifest))
    if not policy.enabled:
        return PolicyResult(obj, (), ())
    found = list(_violations(obj, policy))
    refused = tuple(v for v in found if v.category not in policy.strip)
    stripped = tuple(v for v in found if v.category in policy.strip)
    paths = {v.path for v in stripped}
    volumes = {(p[:-2], _get(obj, p).get("name")) for p in paths if p[-2:-1] == ("volumes",)}
    # Deepest and last first, so removing a list item never shifts a path still to remove.
    for path in sorted(paths, key=_sort_key, reverse=True):
        _remove(obj, path)
    _drop_mounts(obj, volumes)
    return PolicyResult(obj, refused, stripped)


def _map(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else an empty one: a malformed field is the validator's
    to report, never a crash here."""
    return value if isinstance(value, Mapping) else {}


def _sort_key(path: Path) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, p) if isinstance(p, int) else (1, p) for p in path)


def _get(obj: Any, path: Path) -> Any:
    for part in path:
        obj = obj[part]
    return obj


def _remove(obj: Any, path: Path) -> None:
    del _get(obj, path[:-1])[path[-1]]


# -- finding violations -----------------------------------------------------------------------


def _pod_specs(obj: Mapping[str, Any]) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    cluster = _map(obj.get("spec")).get("rayClusterConfig")
    if not isinstance(cluster, Mapping):
        return
    at: Path = ("spec", "rayClusterConfig")
    head = cluster.get("headGroupSpec")
    if isinstance(head, Mapping):
        pod = _map(head.get("template")).get("spec")
        if isinstance(pod, Mapping):
            yield (*at, "headGroupSpec", "template", "spec"), pod
    groups = cluster.get("workerGroupSpecs")
    for index, group in enumerate(groups if isinstance(groups, list) else ()):
        pod = (_map(group.get("template")).get("spec")) if isinstance(group, Mapping) else None
        if isinstance(pod, Mapping):
            yield (*at, "workerGroupSpecs", index, "template", "spec"), pod


def _containers(obj: Mapping[str, Any]) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    for at, pod in _pod_specs(obj):
        for field in _CONTAINER_LISTS:
            containers = pod.get(field)
            for index, container in enumerate(containers if isinstance(containers, list) else ()):
                if isinstance(container, Mapping):
                    yield (*at, field, index), container
    # The autoscaler sidecar KubeRay adds to the head pod takes these from the manifest.
    options = _map(_map(obj.get("spec")).get("rayClusterConfig")).get("autoscalerOptions")
    if isinstance(options, Mapping):
        yield ("spec", "rayClusterConfig", "autoscalerOptions"), options


def _violations(obj: Mapping[str, Any], policy: PodPolicy) -> Iterator[Violation]:
    for at, pod in _pod_specs(obj):
        yield from _pod(at, pod)
    for at, container in _containers(obj):
        yield from _container(at, container, policy)
    if policy.runtime_env:
        yield from _serve_runtime_envs(obj, policy.runtime_env)


def _pod(at: Path, pod: Mapping[str, Any]) -> Iterator[Violation]:
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key) is True:
            yield Violation("hostNamespaces", (*at, key), f"{key} shares the node's namespace")
    for key in ("serviceAccountName", "serviceAccount"):
        name = pod.get(key)
        if name not in (None, "", "default"):
            yield Violation(
                "serviceAccount",
                (*at, key),
                f"service account {name!r}: pods run as the namespace's default account",
            )
    if pod.get("automountServiceAccountToken") is True:
        yield Violation(
            "serviceAccount",
            (*at, "automountServiceAccountToken"),
            "mounts an API token into the pod",
        )
    windows = _map(pod.get("securityContext")).get("windowsOptions")
    if isinstance(windows, Mapping) and windows.get("hostProcess") is True:
        yield Violation(
            "privileged",
            (*at, "securityContext", "windowsOptions", "hostProcess"),
            "hostProcess runs on the node itself",
        )
    volumes = pod.get("volumes")
    for index, volume in enumerate(volumes if isinstance(volumes, list) else ()):
        if isinstance(volume, Mapping):
            yield from _volume((*at, "volumes", index), volume)


def _volume(at: Path, volume: Mapping[str, Any]) -> Iterator[Violation]:
    name = volume.get("name")
    if "hostPath" in volume:
        path = _map(volume.get("hostPath")).get("path")
        yield Violation("hostPath", at, f"volume {name!r} mounts the node's {path!r}")
    if "secret" in volume:
        secret = _map(volume.get("secret")).get("secretName")
        yield Violation("secrets", at, f"volume {name!r} mounts Secret {secret!r}")
    csi = volume.get("csi")
    if isinstance(csi, Mapping) and (
        csi.get("driver") == SECRETS_CSI_DRIVER or "nodePublishSecretRef" in csi
    ):
        yield Violation("secrets", at, f"volume {name!r} mounts secrets through CSI")
    sources = _map(volume.get("projected")).get("sources")
    for index, source in enumerate(sources if isinstance(sources, list) else ()):
        if isinstance(source, Mapping) and "secret" in source:
            secret = _map(source.get("secret")).get("name")
            yield Violation(
                "secrets",
                (*at, "projected", "sources", index),
                f"volume {name!r} projects Secret {secret!r}",
            )


def _container(at: Path, container: Mapping[str, Any], policy: PodPolicy) -> Iterator[Violation]:
    name = container.get("name", "autoscaler")
    context = container.get("securityContext")
    if isinstance(context, Mapping):
        sc = (*at, "securityContext")
        if context.get("privileged") is True:
            yield Violation("privileged", (*sc, "privileged"), f"container {name!r} is privileged")
        if context.get("allowPrivilegeEscalation") is True:
            yield Violation(
                "privileged",
                (*sc, "allowPrivilegeEscalation"),
                f"container {name!r} allows privilege escalation",
            )
        windows = context.get("windowsOptions")
        if isinstance(windows, Mapping) and windows.get("hostProcess") is True:
            yield Violation(
                "privileged",
                (*sc, "windowsOptions", "hostProcess"),
                f"container {name!r} runs on the node itself",
            )
        added = _map(context.get("capabilities")).get("add")
        for index, cap in enumerate(added if isinstance(added, list) else ()):
            if str(cap).upper().removeprefix("CAP_") not in ALLOWED_CAPABILITIES:
                yield Violation(
                    "capabilities",
                    (*sc, "capabilities", "add", index),
                    f"container {name!r} adds capability {cap}",
                )
    ports = container.get("ports")
    for index, port in enumerate(ports if isinstance(ports, list) else ()):
        if isinstance(port, Mapping) and port.get("hostPort"):
            yield Violation(
                "hostPorts",
                (*at, "ports", index, "hostPort"),
                f"container {name!r} binds the node's port {port['hostPort']}",
            )
    env_from = container.get("envFrom")
    for index, source in enumerate(env_from if isinstance(env_from, list) else ()):
        if isinstance(source, Mapping) and "secretRef" in source:
            secret = _map(source.get("secretRef")).get("name")
            yield Violation(
                "secrets",
                (*at, "envFrom", index),
                f"container {name!r} reads Secret {secret!r} into its environment",
            )
    env = container.get("env")
    for index, var in enumerate(env if isinstance(env, list) else ()):
        ref = _map(_map(var).get("valueFrom")).get("secretKeyRef")
        if ref is not None:
            secret = ref.get("name") if isinstance(ref, Mapping) else None
            yield Violation(
                "secrets",
                (*at, "env", index),
                f"variable {var.get('name')!r} reads Secret {secret!r}",
            )
    image = container.get("image")
    if policy.images and isinstance(image, str) and not image_allowed(image, policy.images):
        yield Violation(
            "images", (*at, "image"), f"image {image!r} is not in the allow-list (policy.images)"
        )


def image_allowed(image: str, patterns: tuple[str, ...]) -> bool:
    """``image`` as written, or in its full form (``ray`` is ``docker.io/library/ray``),
    matches one of the globs."""
    forms = (image, full_image(image))
    return any(fnmatch.fnmatchcase(form, p) for form in forms for p in patterns)


def full_image(image: str) -> str:
    first, _, rest = image.partition("/")
    if not rest:
        return f"docker.io/library/{image}"
    if "." in first or ":" in first or first == "localhost":
        return image
    return f"docker.io/{image}"


# -- runtime_env --------------------------------------------------------------------------------


def _serve_runtime_envs(obj: Mapping[str, Any], allowed: tuple[str, ...]) -> Iterator[Violation]:
    at: Path = ("spec", "serveConfigV2")
    text = _map(obj.get("spec")).get("serveConfigV2")
    try:
        serve = yaml.safe_load(text) if isinstance(text, str) else None
    except yaml.YAMLError:
        return  # validation reports it
    apps = serve.get("applications") if isinstance(serve, Mapping) else None
    for app in apps if isinstance(apps, list) else ():
        if not isinstance(app, Mapping):
            continue
        where = f"application {app.get('name')!r}"
        yield from _runtime_env(at, app.get("runtime_env"), where, allowed)
        deployments = app.get("deployments")
        for dep in deployments if isinstance(deployments, list) else ():
            options = dep.get("ray_actor_options") if isinstance(dep, Mapping) else None
            if isinstance(options, Mapping):
                yield from _runtime_env(
                    at,
                    options.get("runtime_env"),
                    f"{where} deployment {dep.get('name')!r}",
                    allowed,
                )


def _is_url(text: str) -> bool:
    return "://" in text or text.startswith("git+")


def _runtime_env(at: Path, env: Any, where: str, allowed: tuple[str, ...]) -> Iterator[Violation]:
    if not isinstance(env, Mapping):
        return

    def refuse(field: str, what: str) -> Violation:
        return Violation(
            "runtimeEnv",
            at,
            f"{where}: runtime_env.{field} {what} is not in the allow-list (policy.runtimeEnv)",
        )

    def urls(field: str, values: Any) -> Iterator[Violation]:
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and _is_url(value) and not _url_allowed(value, allowed):
                yield refuse(field, repr(value))

    yield from urls("working_dir", env.get("working_dir"))
    yield from urls("py_modules", env.get("py_modules"))
    for field in ("pip", "uv"):
        packages = env.get(field)
        if isinstance(packages, Mapping):
            packages = packages.get("packages")
        for package in packages if isinstance(packages, list) else ():
            text = str(package).strip()
            # "pkg @ https://…" (PEP 508) installs from the URL after the "@"
            url = text if _is_url(text) else text.partition("@")[2].strip()
            if text.startswith("-"):  # --index-url, -e, -r …: packages from anywhere
                yield refuse(field, f"option {text!r}")
            elif _is_url(url) and not _url_allowed(url, allowed):
                yield refuse(field, repr(text))
    conda = env.get("conda")
    if isinstance(conda, Mapping):
        yield from urls("conda.channels", conda.get("channels") or [])
        for dep in conda.get("dependencies") or ():
            if isinstance(dep, Mapping):
                yield from _runtime_env(at, {"pip": dep.get("pip")}, where, allowed)


def _url_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(url, pattern) for pattern in allowed)


# -- stripping ----------------------------------------------------------------------------------


def _drop_mounts(obj: dict[str, Any], volumes: set[tuple[Path, Any]]) -> None:
    """A stripped volume leaves no ``volumeMounts`` naming it (the API server refuses those)."""
    for at, pod in _pod_specs(obj):
        gone = {name for where, name in volumes if where == at}
        if not gone:
            continue
        for field in _CONTAINER_LISTS:
            for container in pod.get(field) or ():
                mounts = container.get("volumeMounts") if isinstance(container, dict) else None
                if isinstance(mounts, list):
                    container["volumeMounts"] = [
                        m for m in mounts if not (isinstance(m, Mapping) and m.get("name") in gone)
                    ]


def problem_text(violation: Violation, where: str) -> str:
    """What a refusal says, short enough for a commit status with the file:line before it
    (which points at the field)."""
    return f"{violation.message}: refused by {where}"
