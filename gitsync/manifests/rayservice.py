"""Validation of one manifest document: a RayService (or an allowed other kind).

Catches before apply what the API server, KubeRay or Ray Serve would reject later, or would
silently get wrong: fields the CRD does not declare, KubeRay's name and ``headService`` rules, an
unknown ``upgradeStrategy``, a ``serveConfigV2`` Ray Serve cannot deploy, and everything the
CRD's OpenAPI schema refuses (gitsync.manifests.schema). Every problem names the file and the
line. Pure.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from gitsync import kuberay, names
from gitsync.manifests.names import namespace_problem, object_name_problem, rayservice_name_problem
from gitsync.manifests.repoconfig import RAYSERVICE, EnvironmentConfig, Kind
from gitsync.manifests.schema import UNKNOWN, spec_problems
from gitsync.manifests.yamldoc import Checker, Document, dotted, parse_documents
from gitsync.model import DesiredObject, DesiredService, Problem, ServiceKey

# Written by gitsync on apply; a manifest that sets them would lie about its provenance.
RESERVED_KEYS = frozenset(
    {
        names.MANAGED_BY,
        names.ENVIRONMENT,
        names.REVISION,
        names.SOURCE,
        names.PREVIEW,
        names.APPLIED_HASH,
    }
)
_WHOLE_NUMBER = re.compile(r"^-?[0-9]{1,6}$")


def _suggest(word: str, choices: frozenset[str] | set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_document(
    doc: Document,
    env: EnvironmentConfig,
    allowed_kinds: tuple[Kind, ...],
    *,
    any_namespace: bool = False,
) -> tuple[DesiredService | DesiredObject | None, list[Problem]]:
    check = Checker(doc)
    kind_of = _check_kind(check, doc.data, allowed_kinds)
    if kind_of is None:
        return None, check.problems
    data, this = kind_of
    api_version, kind = this.api_version, this.kind
    metadata = data.get("metadata")
    if not isinstance(metadata, Mapping):
        check.add("metadata must be a mapping with a name", "metadata")
        return None, check.problems
    name = metadata.get("name")
    name_msg = rayservice_name_problem(name) if this == RAYSERVICE else object_name_problem(name)
    if name_msg:
        check.add(name_msg, "metadata", "name")
    _check_namespace(check, metadata, env, any_namespace)
    wave = _check_labels_and_annotations(check, metadata)
    if "status" in data:
        writer = "KubeRay" if this == RAYSERVICE else "the cluster"
        check.add(
            f"status is written by {writer}, not by Git; remove it from the manifest", "status"
        )
    if this != RAYSERVICE:
        if check.problems:
            return None, check.problems
        obj = DesiredObject(
            ServiceKey(env.namespace, str(name), kind, api_version),
            env.name,
            _with_namespace(data, env),
            doc.file,
            doc.line,
            wave,
        )
        return obj, []
    _check_spec(check, data.get("spec"))
    if check.problems or not isinstance(name, str):
        return None, check.problems
    service = DesiredService(
        ServiceKey(env.namespace, name),
        env.name,
        _with_namespace(data, env),
        doc.file,
        doc.line,
        wave,
    )
    return service, []


def _check_kind(
    check: Checker, data: object, allowed_kinds: tuple[Kind, ...]
) -> tuple[Mapping[str, Any], Kind] | None:
    """The document as a mapping and its kind, or None (and the problem) when gitsync does
    not manage it."""
    if not isinstance(data, Mapping):
        check.add(
            f"a manifest must be a mapping with apiVersion and kind, not a {type(data).__name__}"
        )
        return None
    api_version, kind = data.get("apiVersion"), data.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        check.add("apiVersion and kind are required")
        return None
    this = Kind(api_version, kind)
    if this != RAYSERVICE and this not in allowed_kinds:
        if kind == RAYSERVICE.kind:
            check.add(
                f"RayService apiVersion {api_version!r} is not served for gitsync; use 'ray.io/v1'",
                "apiVersion",
            )
        elif kind == "Kustomization" and api_version.startswith("kustomize.config.k8s.io/"):
            check.add(
                "a kustomization in an environment read as plain YAML: remove 'render: plain' "
                "from the environment in gitsync.yaml and gitsync builds it with kustomize "
                "(docs/repo-config.md, 'Sources')",
                "kind",
            )
        else:
            check.add(
                f"{this} is not managed by gitsync: environments hold {RAYSERVICE} objects "
                "(list other kinds under allowedKinds in gitsync.yaml to apply them too)",
                "kind",
            )
        return None
    return data, this


def _with_namespace(data: Mapping[str, Any], env: EnvironmentConfig) -> dict[str, Any]:
    return {**data, "metadata": {**data["metadata"], "namespace": env.namespace}}


def _check_namespace(
    check: Checker, metadata: Mapping[str, Any], env: EnvironmentConfig, any_namespace: bool
) -> None:
    if "namespace" not in metadata:
        return
    namespace = metadata["namespace"]
    if msg := namespace_problem(namespace):
        check.add(msg, "metadata", "namespace")
    elif namespace != env.namespace and not any_namespace:
        check.add(
            f"metadata.namespace {namespace!r} conflicts with environment {env.name!r}, which "
            f"deploys to {env.namespace!r}; remove the namespace or move the file",
            "metadata",
            "namespace",
        )


def _check_labels_and_annotations(check: Checker, metadata: Mapping[str, Any]) -> int:
    wave = 0
    for field in ("labels", "annotations"):
        values = metadata.get(field)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            check.add(f"metadata.{field} must be a mapping of strings", "metadata", field)
            continue
        for key, value in values.items():
            at = ("metadata", field, key)
            if key in RESERVED_KEYS:
                check.add(f"{field[:-1]} {key!r} is set by gitsync when it applies; remove it", *at)
            elif key.startswith(names.PREFIX) and key != names.WAVE:
                check.add(f"unknown gitsync {field[:-1]} {key!r} (known: {names.WAVE})", *at)
            if not isinstance(value, str):
                shown = "true" if value is True else "false" if value is False else value
                check.add(f'{field[:-1]} {key!r} must be a string; quote it: {key}: "{shown}"', *at)
            elif key == names.WAVE:
                if field != "annotations":
                    check.add(f"{names.WAVE} is an annotation, not a label", *at)
                elif not _WHOLE_NUMBER.match(value):
                    check.add(
                        f'{names.WAVE} must be a whole number such as "0" or "2", not {value!r}',
                        *at,
                    )
                else:
                    wave = int(value)
    return wave


def _check_spec(check: Checker, spec: Any) -> None:
    if not isinstance(spec, Mapping):
        check.add("spec must be a mapping with rayClusterConfig and serveConfigV2", "spec")
        return
    for key in spec:
        if key not in kuberay.RAYSERVICE_SPEC_FIELDS:
            check.add(
                f"unknown field spec.{key}: {UNKNOWN}"
                + _suggest(key, kuberay.RAYSERVICE_SPEC_FIELDS),
                "spec",
                key,
            )
    _check_cluster(check, spec.get("rayClusterConfig"))
    strategy = spec.get("upgradeStrategy")
    if strategy is not None:
        kind = strategy.get("type") if isinstance(strategy, Mapping) else None
        if not isinstance(strategy, Mapping) or (
            "type" in strategy and kind not in kuberay.UPGRADE_TYPES
        ):
            check.add(
                f"spec.upgradeStrategy.type {kind!r} is not one KubeRay knows "
                f"({', '.join(kuberay.UPGRADE_TYPES)}); KubeRay would refuse to reconcile it",
                "spec",
                "upgradeStrategy",
                "type",
            )
    if "serveConfigV2" not in spec:
        check.add("spec.serveConfigV2 is missing: gitsync deploys Ray Serve applications", "spec")
    else:
        _check_serve(check, spec["serveConfigV2"])
    # What the API server would refuse; a field the checks above already reported (with
    # more to say, such as a missing rayClusterConfig) is not reported twice.
    schema = spec_problems(spec)
    for path, message in schema:
        if path not in check.reported:
            check.add(f"{dotted(path)}: {message}", *path)
    # KubeRay's rules read a well-typed spec, as KubeRay only sees one the API server took.
    if not schema:
        _check_kuberay_rules(check, spec["rayClusterConfig"])


def _check_cluster(check: Checker, cluster: Any) -> None:
    at: tuple[str | int, ...] = ("spec", "rayClusterConfig")
    if cluster is None:
        check.add("spec.rayClusterConfig is required", "spec")
        return
    if not isinstance(cluster, Mapping):
        check.add("spec.rayClusterConfig must be a mapping", *at)
        return
    head = cluster.get("headGroupSpec")
    if not isinstance(head, Mapping):
        check.add("spec.rayClusterConfig.headGroupSpec is required", *at)
        return
    head_service = head.get("headService")
    if isinstance(head_service, Mapping) and (head_service.get("metadata") or {}).get("name"):
        check.add(
            "headGroupSpec.headService.metadata.name must not be set in a RayService: KubeRay "
            "names the head Service itself and rejects the RayService",
            *at,
            "headGroupSpec",
            "headService",
            "metadata",
            "name",
        )
    template = head.get("template")
    pod = template.get("spec") if isinstance(template, Mapping) else None
    containers = pod.get("containers") if isinstance(pod, Mapping) else None
    if not isinstance(containers, list) or not containers:
        check.add(
            "headGroupSpec.template.spec.containers needs the ray-head container",
            *at,
            "headGroupSpec",
        )
    groups = cluster.get("workerGroupSpecs") or []
    if not isinstance(groups, list):
        check.add("workerGroupSpecs must be a list", *at, "workerGroupSpecs")
        return
    seen: dict[str, int] = {}
    for index, group in enumerate(groups):
        where = (*at, "workerGroupSpecs", index)
        if not isinstance(group, Mapping):
            check.add("each worker group must be a mapping", *where)
            continue
        name = group.get("groupName")
        if "groupName" not in group:
            check.add("worker group needs a groupName", *where)
        elif not isinstance(name, str) or not name:
            check.add(
                f"{dotted((*where, 'groupName'))} must be a non-empty string, not {name!r}",
                *where,
                "groupName",
            )
        elif name in seen:
            check.add(
                f"worker group {name!r} is declared twice (first on line {seen[name]})",
                *where,
                "groupName",
            )
        else:
            seen[name] = check.doc.line_of(*where, "groupName")
        _check_replicas(check, group, where)


def _check_kuberay_rules(check: Checker, cluster: Mapping[str, Any]) -> None:
    """What KubeRay's ValidateRayClusterSpec refuses (it then never creates the cluster and
    only says so in an event), for a cluster the schema found well-typed. The rules that
    depend on a feature gate gitsync cannot see are left out."""
    at: tuple[str | int, ...] = ("spec", "rayClusterConfig")
    head = cluster.get("headGroupSpec") or {}
    head_pod = (head.get("template") or {}).get("spec") or {}
    head_env = {
        e.get("name"): e.get("value")
        for e in ((head_pod.get("containers") or [{}])[0].get("env") or [])
    }
    groups = cluster.get("workerGroupSpecs") or []
    autoscaling = cluster.get("enableInTreeAutoscaling") is True
    version = (cluster.get("autoscalerOptions") or {}).get("version")
    v2_env = "RAY_enable_autoscaler_v2"
    for index, group in enumerate(groups):
        where = (*at, "workerGroupSpecs", index)
        pod = (group.get("template") or {}).get("spec") or {}
        if pod.get("containers") == []:
            check.add(
                f"{dotted(where)}.template.spec.containers is empty: KubeRay needs the Ray "
                "container and would not create the cluster",
                *where, "template", "spec", "containers",
            )  # fmt: skip
        if autoscaling and group.get("suspend") is True:
            check.add(
                f"worker group {group.get('groupName')!r} cannot be suspended with the "
                "autoscaler enabled (enableInTreeAutoscaling): KubeRay refuses the cluster",
                *where, "suspend",
            )  # fmt: skip
    if not autoscaling and head_env.get(v2_env) in ("1", "true"):
        check.add(
            f"head container env {v2_env}={head_env[v2_env]} needs enableInTreeAutoscaling: "
            "true; KubeRay refuses the cluster",
            *at, "headGroupSpec", "template", "spec", "containers", 0, "env",
        )  # fmt: skip
    if autoscaling and version is not None and v2_env in head_env:
        check.add(
            f"autoscalerOptions.version and the head container env {v2_env} are both set: "
            "KubeRay refuses the cluster; keep only autoscalerOptions.version",
            *at, "autoscalerOptions", "version",
        )  # fmt: skip
    if autoscaling and version == "v2":
        pods = [(("headGroupSpec",), head_pod)] + [
            (("workerGroupSpecs", i), (g.get("template") or {}).get("spec") or {})
            for i, g in enumerate(groups)
        ]
        for where, pod in pods:
            if pod.get("restartPolicy") not in (None, "", "Never"):
                check.add(
                    f"restartPolicy {pod['restartPolicy']!r} with autoscaler v2: KubeRay "
                    "refuses the cluster unless the Pods' restartPolicy is Never or unset",
                    *at, *where, "template", "spec", "restartPolicy",
                )  # fmt: skip
    if (head.get("rayStartParams") or {}).get("redis-username") or "REDIS_USERNAME" in head_env:
        check.add(
            "a redis username in the head's rayStartParams or env: KubeRay refuses the "
            "cluster; set gcsFaultToleranceOptions.redisUsername instead",
            *at, "headGroupSpec",
        )  # fmt: skip


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_replicas(check: Checker, group: Mapping[str, Any], where: tuple[str | int, ...]) -> None:
    """What KubeRay's GetWorkerGroupDesiredReplicas would quietly correct: it runs
    maxReplicas when minReplicas is above it, and when replicas is above it."""
    replicas = _whole(group.get("replicas"))
    low = _whole(group.get("minReplicas", 0))
    high = _whole(group.get("maxReplicas", 2147483647))  # the CRD's defaults
    if low is None or high is None:
        return
    if low > high:
        check.add(
            f"{dotted((*where, 'minReplicas'))} {low} is above maxReplicas {high}: KubeRay "
            f"would run {high} worker(s); fix the bounds",
            *where,
            "minReplicas",
        )
    elif replicas is not None and replicas > high:
        check.add(
            f"{dotted((*where, 'replicas'))} {replicas} is above maxReplicas {high}: KubeRay "
            f"would run {high}, not {replicas}; raise maxReplicas or lower replicas",
            *where,
            "replicas",
        )


def _check_serve(check: Checker, value: Any) -> None:
    at = ("spec", "serveConfigV2")
    if not isinstance(value, str):
        check.add(
            "spec.serveConfigV2 must be a string holding YAML (write 'serveConfigV2: |' and "
            f"indent the config under it), not a {type(value).__name__}",
            *at,
        )
        return
    line = check.doc.line_of(*at)
    block = at in check.doc.block_scalars
    # In a `|` block the string's first line is the file's next line; elsewhere inner lines
    # cannot be mapped back, so every problem points at serveConfigV2 itself.
    offset = line if block else 0
    docs, problems = parse_documents(value, check.doc.file, offset=offset)
    if not block:
        problems = [Problem(p.file, line, p.message) for p in problems]
    for problem in problems:
        check.problems.append(
            Problem(problem.file, problem.line, f"serveConfigV2: {problem.message}")
        )
    if problems:
        return
    if len(docs) != 1 or not isinstance(docs[0].data, Mapping):
        check.add("serveConfigV2 must be one YAML mapping with an applications list", *at)
        return
    serve = docs[0] if block else Document(check.doc.file, docs[0].data, line, {}, 0)
    _check_applications(check, serve)


def _check_applications(check: Checker, serve: Document) -> None:
    def add(message: str, *path: str | int) -> None:
        check.problems.append(serve.problem(f"serveConfigV2: {message}", *path))

    apps = serve.data.get("applications")
    if not isinstance(apps, list) or not apps:
        add(
            "applications must be a non-empty list (Ray Serve deploys nothing without it)",
            "applications",
        )
        return
    names: dict[str, int] = {}
    prefixes: dict[str, str] = {}
    for index, app in enumerate(apps):
        at = ("applications", index)
        if not isinstance(app, Mapping):
            add("each application must be a mapping", *at)
            continue
        name = app.get("name", "default")
        if not isinstance(name, str) or not name:
            add("application name must be a non-empty string", *at, "name")
            continue
        if name in names:
            add(
                f"application {name!r} is declared twice (first on line {names[name]})", *at, "name"
            )
        else:
            names[name] = serve.line_of(*at, "name")
        import_path = app.get("import_path")
        if not isinstance(import_path, str) or not import_path.strip():
            add(f"application {name!r} needs an import_path such as 'module.submodule:app'", *at)
        if "route_prefix" in app and app["route_prefix"] is None:
            pass  # not exposed over HTTP
        else:
            prefix = app.get("route_prefix", "/")
            if not isinstance(prefix, str) or not prefix.startswith("/"):
                add(
                    f"application {name!r}: route_prefix must start with '/', not {prefix!r}",
                    *at,
                    "route_prefix",
                )
            elif prefix != "/" and prefix.endswith("/"):
                add(
                    f"application {name!r}: route_prefix {prefix!r} must not end with '/'",
                    *at,
                    "route_prefix",
                )
            elif prefix in prefixes:
                add(
                    f"application {name!r} uses route_prefix {prefix!r}, already used by "
                    f"application {prefixes[prefix]!r}",
                    *at,
                    "route_prefix",
                )
            else:
                prefixes[prefix] = name
        _check_deployments(add, app.get("deployments"), name, at)


def _check_deployments(add: Any, deployments: Any, app: str, at: tuple[str | int, ...]) -> None:
    if deployments is None:
        return
    if not isinstance(deployments, list):
        add(f"application {app!r}: deployments must be a list", *at, "deployments")
        return
    seen: set[str] = set()
    for index, deployment in enumerate(deployments):
        where = (*at, "deployments", index)
        if not isinstance(deployment, Mapping) or not isinstance(deployment.get("name"), str):
            add(f"application {app!r}: each deployment needs a name", *where)
            continue
        name = deployment["name"]
        if name in seen:
            add(f"application {app!r}: deployment {name!r} is declared twice", *where, "name")
        seen.add(name)
        replicas = deployment.get("num_replicas")
        if (
            replicas is not None
            and replicas != "auto"
            and (not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0)
        ):
            add(
                f"deployment {name!r}: num_replicas must be a whole number ≥ 0 or 'auto', "
                f"not {replicas!r}",
                *where,
                "num_replicas",
            )
