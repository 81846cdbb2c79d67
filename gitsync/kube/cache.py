"""The watch-backed cache of what gitsync manages: :class:`CachedRayServices`.

The same :class:`~gitsync.kube.rayservices.RayServices` interface as the API client, so
planning, rollouts, drift, previews and the status page read through it unchanged. Per
namespace and kind (RayServices, and each allowed kind a pass lists) one
:class:`~gitsync.kube.informer.Informer` keeps gitsync's objects (``managed-by=gitsync``),
started by the first read there; reads are answered from it while its watch is healthy and go
to the API server otherwise (before the first list, while it lists again). Writes go to the
API server and the answer is kept at once. Server-side-apply dry runs are remembered by
(object, body, the live object but its status): a body planned again against an object
nobody but KubeRay's status writes changed costs no request.

A change by another writer (not gitsync's field manager, not a status write) to an object
gitsync manages is told to the subscribers (:meth:`CachedRayServices.subscribe`): the agent's
event-driven drift check (docs/drift.md).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

from kubernetes import client

from gitsync.kube.informer import Event, Informer, WatchSettings, compact
from gitsync.kube.objects import Discovery, Objects, Resource
from gitsync.kube.rayservices import GROUP, PLURAL, VERSION, RayServicesClient
from gitsync.model import ServiceKey
from gitsync.names import ENVIRONMENT, MANAGED_BY, SOURCE

RAYSERVICES = Resource(f"{GROUP}/{VERSION}", "RayService", PLURAL, namespaced=True)
CONFIGMAPS = Resource("v1", "ConfigMap", "configmaps", namespaced=True)
SELECTOR = f"{MANAGED_BY}=gitsync"
# A version token of the cache (list_managed_versioned) rather than a resourceVersion.
CACHE_VERSION = "cache/"

Subscriber = Callable[[ServiceKey, dict[str, Any] | None, dict[str, Any] | None], None]


class Informers:
    """The informers of one process, one per (namespace, resource), started on first use."""

    def __init__(self, api: client.ApiClient, settings: WatchSettings) -> None:
        self.api, self.settings = api, settings
        self.by_path: dict[str, Informer] = {}
        self.writes = Writes()
        self.subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._closed = False

    def informer(self, resource: Resource, namespace: str) -> Informer:
        path = resource.path(namespace)
        with self._lock:
            found = self.by_path.get(path)
            if found is None:
                found = Informer(
                    self.api,
                    path,
                    SELECTOR,
                    self.settings,
                    kind=resource.kind,
                    api_version=resource.api_version,
                    on_event=lambda event: self._event(namespace, resource, event),
                )
                self.by_path[path] = found
                if not self._closed:
                    found.start()
            return found

    def synced(self, resource: Resource, namespace: str) -> Informer | None:
        """The informer of ``namespace``'s ``resource`` when its watch is healthy (started
        now if it was not)."""
        found = self.informer(resource, namespace)
        return found if found.synced else None

    def distrust(self) -> None:
        """Every informer lists again before its reads are served (the API server or etcd
        failed a request: a watch may have outlived their restart without closing)."""
        with self._lock:
            informers = list(self.by_path.values())
        for informer in informers:
            informer.distrust()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            informers = list(self.by_path.values())
        for informer in informers:
            informer.halt()
        deadline = time.monotonic() + 2.0
        for informer in informers:
            informer.join(max(0.0, deadline - time.monotonic()))

    def _event(self, namespace: str, resource: Resource, event: Event) -> None:
        _, old, new = event
        obj = new or old
        if obj is None:
            return
        if resource != RAYSERVICES and SOURCE not in (obj["metadata"].get("annotations") or {}):
            return  # not applied from Git: gitsync's own state ConfigMaps
        name = obj["metadata"]["name"]
        key = ServiceKey(namespace, name, resource.kind, resource.api_version)
        if not self.writes.foreign(key, old, new):
            return
        for subscriber in list(self.subscribers):
            subscriber(key, old, new)


class Writes:
    """What gitsync itself wrote (applies in flight, the resourceVersions they produced,
    deletes), so its own writes are not taken for another writer's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[ServiceKey, int] = {}
        self._versions: dict[ServiceKey, set[str]] = {}

    def begin(self, key: ServiceKey) -> None:
        with self._lock:
            self._busy[key] = self._busy.get(key, 0) + 1

    def end(self, key: ServiceKey, version: str) -> None:
        with self._lock:
            self._busy[key] -= 1
            if not self._busy[key]:
                del self._busy[key]
            if version:
                kept = self._versions.setdefault(key, set())
                if len(kept) > 8:
                    kept.clear()
                kept.add(version)

    def foreign(
        self, key: ServiceKey, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> bool:
        """Whether the change from ``old`` to ``new`` is another writer's: not gitsync's
        (an apply or delete in flight, or a resourceVersion one returned), and not a status
        write (something but the status changed: a managedFields entry outside the status
        subresource, or the content itself; an entry's time counts seconds, so the second
        edit by one writer within a second changes only the content)."""
        with self._lock:
            if key in self._busy:
                return False
            if new is not None and _version(new) in self._versions.get(key, ()):
                return False
        if old is None or new is None:
            return True
        return _content(old) != _content(new)


def _version(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _writers(obj: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Who owns which of ``obj``'s fields (the status subresource left out), and since when."""
    return sorted(
        (
            str(entry.get("manager")),
            str(entry.get("time")),
            json.dumps(entry.get("fieldsV1"), sort_keys=True),
        )
        for entry in (obj.get("metadata") or {}).get("managedFields") or []
        if not entry.get("subresource")
    )


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What a server-side apply merges a body with: ``obj`` without its status, its
    resourceVersion and the status subresource's managedFields (KubeRay's status writes
    change none of what a dry run answers)."""
    metadata = {
        k: v for k, v in (obj.get("metadata") or {}).items() if k not in ("resourceVersion",)
    }
    metadata["managedFields"] = _writers(obj)
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": metadata}


def _ours(obj: dict[str, Any], environment: str | None = None) -> bool:
    return _labelled_ours((obj.get("metadata") or {}).get("labels") or {}, environment)


def _labelled_ours(labels: dict[str, str], environment: str | None = None) -> bool:
    return labels.get(MANAGED_BY) == "gitsync" and (
        environment is None or labels.get(ENVIRONMENT) == environment
    )


class CachedObjects(Objects):
    """:class:`~gitsync.kube.objects.Objects` whose lists and reads of gitsync's objects
    come from the informers."""

    def __init__(
        self, api: client.ApiClient, informers: Informers, discovery: Discovery | None = None
    ) -> None:
        super().__init__(api, discovery)
        self.informers = informers

    def list_managed(
        self,
        namespace: str,
        environment: str,
        api_version: str,
        kind: str,
        *,
        names: Collection[str] | None = None,
    ) -> dict[ServiceKey, dict[str, Any]]:
        resource = self.discovery.resource(api_version, kind)
        if resource is None:
            return {}
        informer = self.informers.synced(resource, namespace)
        if informer is None:
            return self._list(resource, namespace, environment, names)
        kept = informer.read(lambda labels: _labelled_ours(labels, environment), names)
        return {
            ServiceKey(namespace, o["metadata"]["name"], resource.kind, resource.api_version): o
            for o in kept
            if SOURCE in (o["metadata"].get("annotations") or {})
        }

    def get(self, key: ServiceKey) -> dict[str, Any] | None:
        resource = self.discovery.resource(key.api_version, key.kind)
        if resource is None:
            return None
        informer = self.informers.synced(resource, key.namespace)
        if informer is not None and (found := informer.get(key.name)) is not None:
            return found
        return self._get(resource, key)  # not gitsync's (yet), or not watched

    def delete(self, key: ServiceKey) -> bool:
        resource = self.discovery.resource(key.api_version, key.kind)
        if resource is None:
            return False
        return _deleted(self.informers, resource, key, lambda: self._delete(resource, key))

    def apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        metadata = obj["metadata"]
        key = ServiceKey(metadata["namespace"], metadata["name"], obj["kind"], obj["apiVersion"])
        resource = self.resource(key)
        return _applied(
            self.informers,
            resource,
            key,
            lambda: self._apply(resource, key, obj, dry_run=dry_run, force=force),
            dry_run=dry_run,
        )


def _applied(
    informers: Informers,
    resource: Resource,
    key: ServiceKey,
    call: Callable[[], dict[str, Any]],
    *,
    dry_run: bool,
) -> dict[str, Any]:
    """A write through ``call``, its answer kept by the informer (a dry run stores nothing)."""
    if dry_run:
        return call()
    informers.writes.begin(key)
    version = ""
    try:
        answer = call()
        version = _version(answer)
        if _ours(answer):
            informers.informer(resource, key.namespace).put(answer)
        return answer
    finally:
        informers.writes.end(key, version)


def _deleted(
    informers: Informers, resource: Resource, key: ServiceKey, call: Callable[[], bool]
) -> bool:
    informers.writes.begin(key)
    try:
        gone = call()
        informers.informer(resource, key.namespace).forget(key.name)
        return gone
    finally:
        informers.writes.end(key, "")


class DryRuns:
    """Server-side-apply dry-run answers, one per object, kept while neither the body
    nor the live object (all but its status: :func:`_content`) changed; each compacted and
    frozen as the cache keeps objects (:func:`~gitsync.kube.informer.compact`, JSON text)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[ServiceKey, tuple[str, str]] = {}
        self.asked = 0  # dry runs sent to the API server
        self.remembered = 0  # dry runs answered from here

    def answer(
        self, key: ServiceKey, body: dict[str, Any], live: dict[str, Any], force: bool
    ) -> tuple[str, dict[str, Any] | None]:
        digest = hashlib.sha256(json.dumps([body, live, force], sort_keys=True).encode())
        memo = digest.hexdigest()
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None and kept[0] == memo:
                self.remembered += 1
                found: dict[str, Any] = json.loads(kept[1])
                return memo, found
        return memo, None

    def keep(self, key: ServiceKey, memo: str, answer: dict[str, Any]) -> None:
        text = json.dumps(compact(answer), separators=(",", ":"))
        with self._lock:
            self.asked += 1
            self._kept[key] = (memo, text)


class CachedRayServices:
    """:class:`~gitsync.kube.rayservices.RayServices` read from watches (module docstring)."""

    def __init__(self, api: client.ApiClient, settings: WatchSettings | None = None) -> None:
        self.api = api
        self.direct = RayServicesClient(api)
        self.informers = Informers(api, settings or WatchSettings())
        self.objects: Objects = CachedObjects(api, self.informers, self.direct.objects.discovery)
        self.dry_runs = DryRuns()

    def subscribe(self, subscriber: Subscriber) -> None:
        """Calls ``subscriber(key, old, new)`` on each change another writer makes."""
        self.informers.subscribers.append(subscriber)

    def close(self) -> None:
        self.informers.close()

    def _kept(
        self,
        namespace: str,
        labelled: Callable[[dict[str, str]], bool] | None = None,
        names: Collection[str] | None = None,
    ) -> list[dict[str, Any]] | None:
        informer = self.informers.synced(RAYSERVICES, namespace)
        return informer.read(labelled, names) if informer is not None else None

    def list_managed(
        self, namespace: str, environment: str, *, names: Collection[str] | None = None
    ) -> dict[ServiceKey, dict[str, Any]]:
        kept = self._kept(namespace, lambda labels: _labelled_ours(labels, environment), names)
        if kept is None:
            return self.direct.list_managed(namespace, environment, names=names)
        return {ServiceKey(namespace, o["metadata"]["name"]): o for o in kept}

    def versions(self, namespace: str, environment: str) -> dict[ServiceKey, str] | None:
        """The resourceVersion of each RayService gitsync manages for ``environment`` in
        ``namespace``, read without decoding any; None until the namespace's cache is in."""
        informer = self.informers.synced(RAYSERVICES, namespace)
        if informer is None:
            return None
        with informer.changed:
            kept = list(informer.objects.values())
        return {
            ServiceKey(namespace, k.name): k.version
            for k in kept
            if _labelled_ours(k.labels, environment)
        }

    def list_managed_metadata(
        self, namespace: str, environment: str
    ) -> dict[ServiceKey, dict[str, Any]]:
        kept = self._kept(namespace, lambda labels: _labelled_ours(labels, environment))
        if kept is None:
            return self.direct.list_managed_metadata(namespace, environment)
        return {ServiceKey(namespace, o["metadata"]["name"]): o for o in kept}

    def list_every_managed(self, namespace: str | None = None) -> list[dict[str, Any]]:
        kept = self._kept(namespace) if namespace else None
        return kept if kept is not None else self.direct.list_every_managed(namespace)

    def list_labelled(self, namespace: str, label: str) -> list[dict[str, Any]]:
        kept = self._kept(namespace, lambda labels: label in labels)
        if kept is None:
            return self.direct.list_labelled(namespace, label)
        return kept

    def list_managed_versioned(
        self, namespace: str, environment: str
    ) -> tuple[dict[ServiceKey, dict[str, Any]], str]:
        informer = self.informers.synced(RAYSERVICES, namespace)
        if informer is None:
            return self.direct.list_managed_versioned(namespace, environment)
        with informer.changed:
            kept, sequence = list(informer.objects.values()), informer.sequence
        listed = {
            ServiceKey(namespace, k.name): k.thaw()
            for k in kept
            if _labelled_ours(k.labels, environment)
        }
        return listed, f"{CACHE_VERSION}{sequence}"

    def watch_managed(
        self, namespace: str, environment: str, resource_version: str, seconds: float
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """As the client's, from the cache when ``resource_version`` is a cache token: each
        change the watch brings, as soon as it is in (ends early when the cache relists)."""
        if not resource_version.startswith(CACHE_VERSION):
            yield from self.direct.watch_managed(namespace, environment, resource_version, seconds)
            return
        informer = self.informers.informer(RAYSERVICES, namespace)
        changes = informer.changes(int(resource_version[len(CACHE_VERSION) :]), seconds)
        for kind, old, new in changes or ():
            obj = new if new is not None else old
            if obj is not None and _ours(obj, environment):
                yield kind, obj

    def get(self, key: ServiceKey) -> dict[str, Any] | None:
        if not key.is_rayservice:
            return self.objects.get(key)
        informer = self.informers.synced(RAYSERVICES, key.namespace)
        if informer is not None and (found := informer.get(key.name)) is not None:
            return found
        return self.direct.get(key)  # not gitsync's (yet), or not watched

    def delete(self, key: ServiceKey) -> bool:
        if not key.is_rayservice:
            return self.objects.delete(key)
        return _deleted(self.informers, RAYSERVICES, key, lambda: self.direct.delete(key))

    def pending_reasons(self, namespace: str, cluster: str) -> str | None:
        """From the API server: pods and Events are not watched, and this is asked only
        while a new cluster's pods do not run."""
        return self.direct.pending_reasons(namespace, cluster)

    def apply(
        self, obj: dict[str, Any], *, dry_run: bool = False, force: bool = False
    ) -> dict[str, Any]:
        """As the client's. A dry run is answered from memory when the same body was dry-run
        against the same live object (but its status) before."""
        metadata = obj["metadata"]
        rayservice = (obj.get("apiVersion"), obj.get("kind")) == (
            f"{GROUP}/{VERSION}",
            "RayService",
        )
        key = (
            ServiceKey(metadata["namespace"], metadata["name"])
            if rayservice
            else ServiceKey(metadata["namespace"], metadata["name"], obj["kind"], obj["apiVersion"])
        )
        if not dry_run:
            if not rayservice:
                return self.objects.apply(obj, force=force)
            call = lambda: self.direct.apply(obj, force=force)  # noqa: E731
            return _applied(self.informers, RAYSERVICES, key, call, dry_run=False)
        return self._dry_run(key, obj, force, rayservice)

    def _dry_run(
        self, key: ServiceKey, obj: dict[str, Any], force: bool, rayservice: bool
    ) -> dict[str, Any]:
        resource = (
            RAYSERVICES
            if rayservice
            else self.objects.discovery.resource(key.api_version, key.kind)
        )
        informer = self.informers.synced(resource, key.namespace) if resource else None
        if informer is None:  # nothing says whether the live object changed: ask
            return self.direct.apply(obj, dry_run=True, force=force)
        live = informer.get(key.name)
        if live is None:  # perhaps there but not gitsync's: the cache cannot tell it changed
            return self.direct.apply(obj, dry_run=True, force=force)
        memo, known = self.dry_runs.answer(key, obj, _content(live), force)
        if known is not None:
            return known
        answer = self.direct.apply(obj, dry_run=True, force=force)
        self.dry_runs.keep(key, memo, answer)
        return answer
