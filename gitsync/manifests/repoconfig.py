"""The repository's ``gitsync.yaml``: environments, their order, previews, allowed kinds.

Strict: unknown keys, wrong types, duplicate names, paths that leave the repository and
cycles in ``after`` are problems with ``gitsync.yaml:line``. Pure.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from gitsync.manifests.durations import parse_duration
from gitsync.manifests.names import environment_name_problem, namespace_problem
from gitsync.manifests.podpolicy import CATEGORIES, PodPolicy
from gitsync.manifests.quantity import parse_quantity
from gitsync.manifests.yamldoc import Checker, dotted, parse_documents
from gitsync.model import Problem

REPO_CONFIG_FILE = "gitsync.yaml"
# Every environment is planned (one list per namespace) on every pass, and ``ordered`` is
# quadratic in their number: far more than any real repository, far fewer than a hostile one.
MAX_ENVIRONMENTS = 100
MAX_PATH_LENGTH = 1024  # what file systems accept is 4096 with 255 per component


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str

    def __str__(self) -> str:
        return f"{self.api_version} {self.kind}"


RAYSERVICE = Kind("ray.io/v1", "RayService")


CAPACITY_CHECKS = ("warn", "block", "off")
# How an environment's folder becomes manifests: ``auto`` renders with kustomize when the
# folder holds a kustomization, else reads plain YAML (docs/repo-config.md, "Sources").
RENDERERS = ("auto", "plain", "kustomize", "helm")
RENDER_TIMEOUT = 60.0  # seconds per environment and render
MAX_RENDER_TIMEOUT = 600.0


@dataclass(frozen=True)
class HelmSource:
    """``helm: {chart, values, releaseName}``: a chart folder of the repository and its
    values files (repo-relative), rendered with ``helm template``."""

    chart: str
    values: tuple[str, ...] = ()
    release_name: str = ""


@dataclass(frozen=True)
class RenderSource:
    """How an environment is rendered (``render``, ``helm``, ``allowRemote``,
    ``renderTimeout`` in gitsync.yaml)."""

    renderer: str = "auto"
    helm: HelmSource | None = None
    allow_remote: bool = False  # remote kustomize bases (network) are refused unless true
    timeout: float = RENDER_TIMEOUT


WINDOW_KINDS = ("allow", "deny")


@dataclass(frozen=True)
class ChangeWindow:
    """One ``windows:`` entry: from each time ``schedule`` (5-field cron, in ``timezone``)
    fires, for ``duration`` seconds, rollouts are allowed or denied (gitsync/windows.py)."""

    kind: str  # allow | deny
    schedule: str
    duration: float
    timezone: str = "UTC"
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class EnvironmentConfig:
    name: str
    path: str  # repo-relative, normalised, no trailing slash
    namespace: str
    after: tuple[str, ...] = ()
    line: int = field(default=0, compare=False)  # where gitsync.yaml declares it
    prune: bool = False  # delete managed services Git no longer declares (opt-in)
    create_namespace: bool = False
    self_heal: bool = False  # drift: re-apply Git's version (a gated rollout), not only report
    policy: PodPolicy | None = None  # the pod-spec policy (off unless ``policy`` is set)
    # A new RayCluster that does not fit (docs/capacity.md): say so in the plan (warn), also
    # halt the rollout before its wave (block), or do not check (off).
    capacity_check: str = "warn"
    windows: tuple[ChangeWindow, ...] = ()  # change windows (none: always open)
    source: RenderSource = field(default_factory=RenderSource)


@dataclass(frozen=True)
class PreviewConfig:
    source: str  # the environment previews copy from (``from:`` in YAML)
    namespace: str
    ttl: float = 72 * 3600.0  # a preview not updated for this long is deleted
    max_previews: int = 5  # at most this many PRs have a preview at once (oldest PRs first)
    max_worker_replicas: int = 1  # caps every worker group's replicas/min/max
    max_num_replicas: int = 1  # caps every Serve deployment's num_replicas
    fork_label: str = "preview"  # a fork PR gets a preview only with this label …
    allow_authors: tuple[str, ...] = ()  # … or from one of these authors
    branches: str = ""  # forge-less: branches matching this glob (e.g. preview/*) get previews
    # Resource caps (none by default): container requests/limits and ray_actor_options.
    max_cpu: str = ""  # a quantity: "500m", "2"
    max_memory: str = ""  # a quantity: "2Gi"
    max_gpu: int | None = None  # caps every accelerator (any extended resource)
    max_num_of_hosts: int = 1  # caps every worker group's numOfHosts (pods per replica)
    max_worker_groups: int = 4  # a service with more worker groups gets no preview
    max_services: int = 10  # a pull request changing more services gets no preview
    policy: PodPolicy = field(default_factory=PodPolicy)  # on unless ``policy.enabled: false``


@dataclass(frozen=True)
class RepoConfig:
    environments: tuple[EnvironmentConfig, ...]
    previews: PreviewConfig | None = None
    allowed_kinds: tuple[Kind, ...] = ()

    def environment(self, name: str) -> EnvironmentConfig:
        for env in self.environments:
            if env.name == name:
                return env
        known = ", ".join(e.name for e in self.environments)
        raise KeyError(f"no environment {name!r} in {REPO_CONFIG_FILE} (known: {known})")

    def ordered(self) -> list[list[EnvironmentConfig]]:
        """Environments in rollout order: each stage only after every ``after`` is done."""
        done: set[str] = set()
        stages: list[list[EnvironmentConfig]] = []
        remaining = list(self.environments)
        while remaining:
            stage = [e for e in remaining if set(e.after) <= done]
            if not stage:  # a cycle; load_repo_config reports it, never returns it
                raise ValueError("environment order has a cycle")
            stages.append(stage)
            done.update(e.name for e in stage)
            remaining = [e for e in remaining if e.name not in done]
        return stages


def _environment_path(check: Checker, value: str, *path: str | int) -> str | None:
    if any(ord(char) < 32 or char == "\x7f" for char in value):
        check.add("path must not contain control characters (NUL, newline…)", *path)
        return None
    if len(value) > MAX_PATH_LENGTH or any(len(part) > 255 for part in value.split("/")):
        check.add(
            f"path is {len(value)} characters; paths are limited to {MAX_PATH_LENGTH}, "
            "with at most 255 per folder name",
            *path,
        )
        return None
    normal = posixpath.normpath(value.strip("/")) if not value.startswith("/") else value
    if value.startswith("/") or normal == ".." or normal.startswith("../"):
        check.add(f"path {value!r} must be relative and stay inside the repository", *path)
        return None
    return "" if normal == "." else normal


def _environment(
    check: Checker, raw: Any, at: tuple[str | int, ...], seen: dict[str, int]
) -> EnvironmentConfig | None:
    """One entry of ``environments``; records its name in ``seen`` for duplicate checks."""
    allowed = {
        "name", "path", "namespace", "after", "prune", "createNamespace", "selfHeal", "policy",
        "capacityCheck", "windows",
    } | RENDER_KEYS  # fmt: skip
    if not check.mapping(raw, allowed, {"name", "path", "namespace"}, *at):
        return None
    name, path, namespace = raw.get("name"), raw.get("path"), raw.get("namespace")
    if "name" in raw and (msg := environment_name_problem(name)):
        check.add(msg, *at, "name")
    if "namespace" in raw and (msg := namespace_problem(namespace)):
        check.add(msg, *at, "namespace")
    if isinstance(name, str) and name in seen:
        check.add(
            f"environment {name!r} is declared twice (first on line {seen[name]})", *at, "name"
        )
    elif isinstance(name, str):
        seen[name] = check.doc.line_of(*at, "name")
    if "path" in raw and not isinstance(path, str):
        check.add("path must be a string", *at, "path")
    clean_path = _environment_path(check, path, *at, "path") if isinstance(path, str) else None
    after = raw.get("after", [])
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        check.add("after must be a list of environment names", *at, "after")
        after = []
    flags = {}
    for key in ("prune", "createNamespace", "selfHeal"):
        value = raw.get(key, False)
        if not isinstance(value, bool):
            check.add(f"{key} must be true or false", *at, key)
        flags[key] = value is True
    policy = _policy(check, raw["policy"], *at, "policy") if "policy" in raw else None
    capacity = raw.get("capacityCheck", "warn")
    if capacity not in CAPACITY_CHECKS:
        check.add(
            f"capacityCheck must be one of {', '.join(CAPACITY_CHECKS)}", *at, "capacityCheck"
        )
        capacity = "warn"
    if isinstance(name, str) and isinstance(namespace, str) and clean_path is not None:
        return EnvironmentConfig(
            name,
            clean_path,
            namespace,
            tuple(after),
            check.doc.line_of(*at),
            prune=flags["prune"],
            create_namespace=flags["createNamespace"],
            self_heal=flags["selfHeal"],
            policy=policy,
            capacity_check=capacity,
            windows=_windows(check, raw.get("windows", []), *at, "windows"),
            source=_render_source(check, raw, at),
        )
    return None


def _windows(check: Checker, raw: Any, *at: str | int) -> tuple[ChangeWindow, ...]:
    """``windows:`` of an environment: their shape (the cron expressions and time zones are
    read by gitsync/windows.py, which reports what it cannot read at the same lines)."""
    if not isinstance(raw, list):
        check.add("windows must be a list of {kind, schedule, duration, timeZone}", *at)
        return ()
    found = []
    for index, entry in enumerate(raw):
        where = (*at, index)
        if not check.mapping(entry, {"kind", "schedule", "duration", "timeZone"},
                             {"kind", "schedule", "duration"}, *where):  # fmt: skip
            continue
        kind, schedule = entry.get("kind"), check.string(entry.get("schedule"), *where, "schedule")
        if kind not in WINDOW_KINDS:
            check.add(f"kind must be one of {', '.join(WINDOW_KINDS)}", *where, "kind")
        duration = parse_duration(entry.get("duration"))
        if duration is None and "duration" in entry:
            check.add("duration must be a positive duration such as 90m or 64h", *where, "duration")
        zone = check.string(entry.get("timeZone", "UTC"), *where, "timeZone")
        if kind in WINDOW_KINDS and schedule and duration is not None and zone:
            line = check.doc.line_of(*where)
            found.append(ChangeWindow(str(kind), schedule, duration, zone, line))
    return tuple(found)


RENDER_KEYS = frozenset({"render", "helm", "allowRemote", "renderTimeout"})


def _render_source(check: Checker, raw: dict[str, Any], at: tuple[str | int, ...]) -> RenderSource:
    """An environment's ``render``, ``helm``, ``allowRemote`` and ``renderTimeout``."""
    renderer = raw.get("render", "helm" if "helm" in raw else "auto")
    if renderer not in RENDERERS:
        check.add(f"render must be one of {', '.join(RENDERERS)}", *at, "render")
        renderer = "auto"
    helm = _helm(check, raw["helm"], *at, "helm") if "helm" in raw else None
    if renderer == "helm" and helm is None and "helm" not in raw:
        check.add("render: helm needs helm: {chart: <folder>, values: [...]}", *at, "render")
    elif helm is not None and renderer != "helm":
        check.add("helm is set, so render must be helm (or left out)", *at, "render")
    allow_remote = raw.get("allowRemote", False)
    if not isinstance(allow_remote, bool):
        check.add("allowRemote must be true or false", *at, "allowRemote")
    timeout = parse_duration(raw.get("renderTimeout", f"{RENDER_TIMEOUT:g}s"))
    if timeout is None or not 0 < timeout <= MAX_RENDER_TIMEOUT:
        check.add(
            f"renderTimeout must be a duration up to {MAX_RENDER_TIMEOUT:g}s, such as "
            f"'30s', not {raw.get('renderTimeout')!r}",
            *at,
            "renderTimeout",
        )
        timeout = RENDER_TIMEOUT
    return RenderSource(renderer, helm, allow_remote is True, timeout)


def _helm(check: Checker, raw: Any, *at: str | int) -> HelmSource | None:
    """``helm``: the chart folder and values files, repo-relative and inside the repository."""
    if not check.mapping(raw, {"chart", "values", "releaseName"}, {"chart"}, *at):
        return None
    chart = raw.get("chart")
    if isinstance(chart, str) and ("://" in chart or chart.startswith("oci:")):
        check.add(
            f"helm.chart {chart!r} is not a folder of this repository; charts are not "
            "fetched from repositories or registries: vendor the chart",
            *at,
            "chart",
        )
        return None
    chart_path = _environment_path(check, chart, *at, "chart") if isinstance(chart, str) else None
    values = raw.get("values", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        check.add("helm.values must be a list of values files", *at, "values")
        values = []
    paths = [_environment_path(check, v, *at, "values", i) for i, v in enumerate(values)]
    release = raw.get("releaseName", "")
    if not isinstance(release, str) or (release and environment_name_problem(release)):
        check.add("helm.releaseName must be a lowercase name such as 'ray'", *at, "releaseName")
        release = ""
    if chart_path is None or None in paths:
        return None
    return HelmSource(chart_path, tuple(p for p in paths if p is not None), release)


def load_repo_config(
    text: str, file: str = REPO_CONFIG_FILE
) -> tuple[RepoConfig | None, list[Problem]]:
    documents, problems = parse_documents(text, file)
    if problems:
        return None, problems
    if len(documents) != 1:
        return None, [Problem(file, 1, f"{file} must hold exactly one YAML document")]
    doc = documents[0]
    check = Checker(doc)
    data = doc.data
    if not check.mapping(data, {"environments", "previews", "allowedKinds"}, {"environments"}):
        return None, check.problems

    environments, names = _environments(check, data.get("environments"))
    previews = _previews(check, data.get("previews"), names) if "previews" in data else None
    kinds = _kinds(check, data.get("allowedKinds")) if "allowedKinds" in data else ()
    if check.problems:
        return None, sorted(check.problems, key=lambda p: p.line or 0)
    return RepoConfig(tuple(environments), previews, kinds), []


def _environments(check: Checker, raw_envs: Any) -> tuple[list[EnvironmentConfig], set[str]]:
    """``environments``: each one checked, then their ``after`` order (no self, no unknown
    name, no cycle)."""
    environments: list[EnvironmentConfig] = []
    if not isinstance(raw_envs, list) or not raw_envs:
        check.add("environments must be a non-empty list", "environments")
        raw_envs = []
    elif len(raw_envs) > MAX_ENVIRONMENTS:
        check.add(
            f"{len(raw_envs)} environments are declared; the limit is {MAX_ENVIRONMENTS}: "
            "use one repository (and agent) per group of environments",
            "environments",
        )
        raw_envs = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_envs):
        env = _environment(check, raw, ("environments", index), seen)
        if env is not None:
            environments.append(env)

    names = set(seen)
    for index, env in enumerate(environments):
        for other in env.after:
            if other == env.name:
                check.add(
                    f"environment {env.name!r} cannot come after itself",
                    "environments",
                    index,
                    "after",
                )
            elif other not in names:
                check.add(
                    f"environment {env.name!r} comes after {other!r}, which is not declared",
                    "environments",
                    index,
                    "after",
                )
    if not check.problems:
        config = RepoConfig(tuple(environments))
        try:
            config.ordered()
        except ValueError:
            cycle = ", ".join(e.name for e in environments if e.after)
            check.add(f"the 'after' order has a cycle among: {cycle}", "environments")

    return environments, names


def _previews(check: Checker, raw: Any, names: set[str]) -> PreviewConfig | None:
    keys = {"from", "namespace", "ttl", "maxPreviews", "overrides", "forks", "branches", "policy"}
    if not check.mapping(raw, keys, {"from", "namespace"}, "previews"):
        return None
    source = check.string(raw.get("from"), "previews", "from")
    namespace = raw.get("namespace")
    if msg := namespace_problem(namespace):
        check.add(msg, "previews", "namespace")
        return None
    if source is not None and source not in names:
        check.add(
            f"previews.from names {source!r}, which is not a declared environment",
            "previews",
            "from",
        )
        return None
    default = PreviewConfig("", "")
    ttl = parse_duration(raw.get("ttl", "72h"))
    if ttl is None:
        check.add(f"previews.ttl must be a duration such as '72h', not {raw.get('ttl')!r}",
                  "previews", "ttl")  # fmt: skip
    counts, resources = _preview_limits(check, raw, default)
    label, authors = _preview_forks(check, raw.get("forks", {}), default)
    branches = raw.get("branches", "")
    if not isinstance(branches, str):
        check.add("previews.branches must be a glob such as 'preview/*'", "previews", "branches")
        branches = ""
    policy = _policy(check, raw.get("policy", {}), "previews", "policy")
    if not source:
        return None
    return PreviewConfig(
        source,
        namespace,
        ttl or default.ttl,
        counts["maxPreviews"],
        counts["maxWorkerReplicas"],
        counts["maxNumReplicas"],
        label,
        authors,
        branches,
        max_cpu=resources[0],
        max_memory=resources[1],
        max_gpu=resources[2],
        max_num_of_hosts=counts["maxNumOfHosts"],
        max_worker_groups=counts["maxWorkerGroups"],
        max_services=counts["maxServices"],
        policy=policy,
    )


def _preview_limits(
    check: Checker, raw: dict[str, Any], default: PreviewConfig
) -> tuple[dict[str, int], tuple[str, str, int | None]]:
    """``previews.maxPreviews`` and ``previews.overrides``: the whole-number limits (a bad
    one reported and replaced by its default) and the resource caps."""
    counts = {}
    overrides = raw.get("overrides", {})
    check.mapping(
        overrides,
        {
            "maxWorkerReplicas",
            "maxNumReplicas",
            "maxCpu",
            "maxMemory",
            "maxGpu",
            "maxNumOfHosts",
            "maxWorkerGroups",
            "maxServices",
        },
        set(),
        "previews",
        "overrides",
    )
    resources = _resource_caps(check, overrides if isinstance(overrides, dict) else {})
    for at, key, fallback in (
        (("previews",), "maxPreviews", default.max_previews),
        (("previews", "overrides"), "maxWorkerReplicas", default.max_worker_replicas),
        (("previews", "overrides"), "maxNumReplicas", default.max_num_replicas),
        (("previews", "overrides"), "maxNumOfHosts", default.max_num_of_hosts),
        (("previews", "overrides"), "maxWorkerGroups", default.max_worker_groups),
        (("previews", "overrides"), "maxServices", default.max_services),
    ):
        value = (raw if len(at) == 1 else overrides if isinstance(overrides, dict) else {}).get(
            key, fallback
        )
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            check.add(f"{'.'.join(at)}.{key} must be a whole number ≥ 1, not {value!r}", *at, key)
            value = fallback
        counts[key] = value
    return counts, resources


def _preview_forks(
    check: Checker, forks: Any, default: PreviewConfig
) -> tuple[str, tuple[str, ...]]:
    """``previews.forks``: the label that lets a fork's pull request preview, and the
    authors allowed without it."""
    label, authors = default.fork_label, default.allow_authors
    if check.mapping(forks, {"label", "allowAuthors"}, set(), "previews", "forks"):
        label = str(forks.get("label", label) or "")
        raw_authors = forks.get("allowAuthors", [])
        if not isinstance(raw_authors, list) or not all(isinstance(a, str) for a in raw_authors):
            check.add("previews.forks.allowAuthors must be a list of user names",
                      "previews", "forks", "allowAuthors")  # fmt: skip
        else:
            authors = tuple(raw_authors)
    return label, authors


def _policy(check: Checker, raw: Any, *at: str | int) -> PodPolicy:
    """``policy``: the pod-spec policy (:mod:`gitsync.manifests.podpolicy`)."""
    if not check.mapping(raw, {"enabled", "strip", "images", "runtimeEnv"}, set(), *at):
        return PodPolicy()
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        check.add(f"{dotted(at)}.enabled must be true or false", *at, "enabled")
        enabled = True
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("strip", "images", "runtimeEnv"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            check.add(f"{key} must be a list of strings", *at, key)
            value = []
        lists[key] = tuple(value)
    for index, category in enumerate(lists["strip"]):
        if category not in CATEGORIES:
            check.add(
                f"strip: unknown category {category!r} (known: {', '.join(CATEGORIES)})",
                *at,
                "strip",
                index,
            )
    return PodPolicy(enabled, frozenset(lists["strip"]), lists["images"], lists["runtimeEnv"])


def _resource_caps(check: Checker, overrides: dict[str, Any]) -> tuple[str, str, int | None]:
    quantities = []
    for key, example in (("maxCpu", "'500m' or 2"), ("maxMemory", "'2Gi'")):
        value = overrides.get(key)
        if value is None:
            quantities.append("")
            continue
        amount = parse_quantity(value)
        if amount is None or amount <= 0:
            check.add(f"previews.overrides.{key} must be a positive quantity such as {example}, "
                      f"not {value!r}", "previews", "overrides", key)  # fmt: skip
            quantities.append("")
        else:
            quantities.append(str(value))
    gpu = overrides.get("maxGpu")
    if gpu is not None and (not isinstance(gpu, int) or isinstance(gpu, bool) or gpu < 0):
        check.add(f"previews.overrides.maxGpu must be a whole number ≥ 0, not {gpu!r}",
                  "previews", "overrides", "maxGpu")  # fmt: skip
        gpu = None
    return quantities[0], quantities[1], gpu


def _kinds(check: Checker, raw: Any) -> tuple[Kind, ...]:
    if not isinstance(raw, list):
        check.add("allowedKinds must be a list of {apiVersion, kind}", "allowedKinds")
        return ()
    kinds = []
    for index, item in enumerate(raw):
        if check.mapping(
            item, {"apiVersion", "kind"}, {"apiVersion", "kind"}, "allowedKinds", index
        ):
            api_version = check.string(item.get("apiVersion"), "allowedKinds", index, "apiVersion")
            kind = check.string(item.get("kind"), "allowedKinds", index, "kind")
            if api_version and kind:
                kinds.append(Kind(api_version, kind))
    return tuple(kinds)
