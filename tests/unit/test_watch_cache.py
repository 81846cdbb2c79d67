"""The cache's bookkeeping without a network: watch events applied to the store, bounded
history, readers that fall behind, who wrote a change, compaction, the dry-run memory, and
the event-driven drift checks' gathering of changed objects.
(tests/integration/test_watch_cache.py runs the same against the real API server.)"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest

from gitsync.config import load_agent_config
from gitsync.diff.drift import owners
from gitsync.diff.normalize import owned
from gitsync.drift import DriftChecker, DriftEvents, DriftReport
from gitsync.health import assess
from gitsync.kube.cache import DryRuns, Writes, _content, _writers
from gitsync.kube.informer import (
    Event,
    Expired,
    Informer,
    Kept,
    WatchSettings,
    compact,
    freeze,
)
from gitsync.model import Action, Change, ServiceKey
from gitsync.names import APPLIED_HASH
from gitsync.plan import unchanged_plan
from gitsync.stamp import untouched_since_apply

KEY = ServiceKey("ns", "ranker")


def obj(
    version: int, *, spec: int = 1, writers: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "ranker",
            "resourceVersion": str(version),
            "managedFields": writers
            if writers is not None
            else [{"manager": "gitsync", "operation": "Apply", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"value": spec},
    }


def informer(history: int = 4) -> tuple[Informer, list[Event]]:
    told: list[Event] = []
    found = Informer(
        None,  # no request is made in these tests
        "/apis/ray.io/v1/namespaces/ns/rayservices",
        "app.kubernetes.io/managed-by=gitsync",
        WatchSettings(history=history),
        kind="RayService",
        api_version="ray.io/v1",
        on_event=told.append,
    )
    found.synced = True
    return found, told


def test_watch_events_update_the_store_and_are_told() -> None:
    store, told = informer()
    store._apply({"type": "ADDED", "object": obj(1)})
    store._apply({"type": "MODIFIED", "object": obj(2, spec=2)})
    assert (store.get("ranker") or {})["spec"] == {"value": 2}
    assert (store.get("ranker") or {})["apiVersion"] == "ray.io/v1"  # filled in
    store._apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
    assert store.version == "9"
    assert len(told) == 2  # a bookmark changes nothing
    store._apply({"type": "DELETED", "object": obj(10)})
    assert store.objects == {}
    assert [kind for kind, _, _ in told] == ["ADDED", "MODIFIED", "DELETED"]
    assert told[1][1] is not None
    assert told[1][1]["spec"] == {"value": 1}  # the old object comes with the change


def test_a_410_error_event_is_expired_and_another_error_breaks_the_watch() -> None:
    store, _ = informer()
    with pytest.raises(Expired):
        store._apply({"type": "ERROR", "object": {"code": 410, "message": "too old"}})
    with pytest.raises(Exception, match="500"):
        store._apply({"type": "ERROR", "object": {"code": 500, "message": "etcd"}})


def test_the_history_is_bounded_and_a_reader_too_far_behind_reads_everything() -> None:
    store, _ = informer(history=4)
    for version in range(1, 11):
        store._apply({"type": "MODIFIED", "object": obj(version, spec=version)})
    assert len(store.history) == 4
    assert store.changes(0, 0.0) is None  # six changes were dropped: list again
    recent = store.changes(8, 0.0)
    assert recent is not None
    assert [new["spec"]["value"] for _, _, new in recent if new] == [9, 10]


def test_a_follower_wakes_on_the_next_change_and_stops_when_the_watch_breaks() -> None:
    store, _ = informer()
    changes = store.changes(store.sequence, 5.0)
    assert changes is not None

    def later() -> None:
        store._apply({"type": "MODIFIED", "object": obj(3)})
        with store.changed:
            store.synced = False
            store.changed.notify_all()

    threading.Timer(0.1, later).start()
    assert [kind for kind, _, _ in changes] == ["MODIFIED"]  # then the broken watch ends it


def test_put_keeps_a_write_unless_the_watch_brought_a_newer_version() -> None:
    store, _ = informer()
    store._apply({"type": "MODIFIED", "object": obj(5, spec=5)})
    store.put(obj(4, spec=4))
    assert (store.get("ranker") or {})["spec"] == {"value": 5}
    store.put(obj(6, spec=6))
    assert (store.get("ranker") or {})["spec"] == {"value": 6}


def test_an_event_older_than_gitsyncs_own_write_is_neither_kept_nor_told() -> None:
    """The watch stream can still carry another writer's change from before gitsync's
    apply when the apply's answer is put: it must not bring back the older object."""
    store, told = informer()
    store._apply({"type": "ADDED", "object": obj(3, spec=3)})
    store.put(obj(6, spec=6))  # gitsync's apply
    store._apply({"type": "MODIFIED", "object": obj(5, spec=5)})  # a status write before it
    assert (store.get("ranker") or {})["spec"] == {"value": 6}
    assert store.version == "5"  # the stream's position moves on all the same
    store._apply({"type": "MODIFIED", "object": obj(6, spec=6)})  # the apply's own event
    store._apply({"type": "MODIFIED", "object": obj(7, spec=7)})
    assert (store.get("ranker") or {})["spec"] == {"value": 7}
    assert [(kind, new and new["spec"]["value"]) for kind, _, new in told] == [
        ("ADDED", 3),
        ("MODIFIED", 6),
        ("MODIFIED", 7),
    ]
    # Deleted by another writer, created again by gitsync before the DELETED event came.
    store.put(obj(9, spec=9))
    store._apply({"type": "DELETED", "object": obj(8, spec=7)})
    assert (store.get("ranker") or {})["spec"] == {"value": 9}
    store._apply({"type": "DELETED", "object": obj(10, spec=9)})
    assert store.get("ranker") is None


def test_compaction_keeps_what_ownership_and_attribution_read() -> None:
    entry = {
        "manager": "kubectl-edit",
        "operation": "Update",
        "apiVersion": "ray.io/v1",
        "fieldsType": "FieldsV1",
        "time": "2026-12-04T10:00:00Z",
        "fieldsV1": {"f:spec": {"f:x": {}}},
    }
    kept = compact(
        {
            **obj(1, writers=[entry]),
            "metadata": {**obj(1, writers=[entry])["metadata"], "selfLink": "/x"},
        }
    )
    assert kept["metadata"]["managedFields"] == [
        {k: entry[k] for k in ("manager", "operation", "time", "fieldsV1")}
    ]
    assert "selfLink" not in kept["metadata"]


def test_another_writers_change_is_foreign_and_gitsyncs_own_or_a_status_write_is_not() -> None:
    writes = Writes()
    before = obj(1)
    edited = obj(
        2,
        writers=[
            *before["metadata"]["managedFields"],
            {"manager": "kubectl-edit", "fieldsV1": {"f:spec": {}}},
        ],
    )
    status = obj(
        3,
        writers=[
            *before["metadata"]["managedFields"],
            {"manager": "kuberay", "subresource": "status", "fieldsV1": {}},
        ],
    )
    assert writes.foreign(KEY, before, edited)
    assert not writes.foreign(KEY, before, status)
    assert writes.foreign(KEY, before, None)  # deleted by someone else
    writes.begin(KEY)  # gitsync's apply in flight
    assert not writes.foreign(KEY, before, edited)
    writes.end(KEY, "2")
    assert not writes.foreign(KEY, before, edited)  # the version gitsync's apply returned
    writes.begin(KEY)
    writes.end(KEY, "")
    assert writes.foreign(KEY, before, obj(4, writers=edited["metadata"]["managedFields"]))


def test_a_dry_run_is_remembered_until_the_body_or_the_live_object_changes() -> None:
    memory = DryRuns()
    body = {"spec": {"value": 1}}
    memo, known = memory.answer(KEY, body, _content(obj(1)), force=True)
    assert known is None
    memory.keep(KEY, memo, {"answer": 1})
    with_status = {**obj(2), "status": {"ready": True}}  # KubeRay's status write: same content
    assert memory.answer(KEY, body, _content(with_status), force=True)[1] == {"answer": 1}
    assert memory.answer(KEY, body, _content(obj(3, spec=9)), force=True)[1] is None
    assert memory.answer(KEY, {"spec": {"value": 2}}, _content(obj(1)), force=True)[1] is None
    assert (memory.asked, memory.remembered) == (1, 1)


def test_drift_events_gather_the_changed_objects_per_environment_and_retry_them() -> None:
    """Changes within the debounce are one check of the objects changed, per environment;
    a check that cannot run now (a pass holds the lock) is tried again with what changed
    meanwhile."""
    other = ServiceKey("ns", "embedder")
    calls: list[dict[str, set[ServiceKey]]] = []
    ran = threading.Semaphore(0)

    def run(changes: dict[str, set[ServiceKey]]) -> bool:
        calls.append({e: set(keys) for e, keys in changes.items()})
        ran.release()
        return len(calls) > 1  # the first time, a pass runs

    events = DriftEvents(run, debounce=0.05, retry=0.05)
    try:
        events.changed("staging", KEY)
        events.changed("staging", KEY)
        events.changed("production", other)
        assert ran.acquire(timeout=10)
        assert ran.acquire(timeout=10)  # tried again, the same changes
    finally:
        events.close()
    assert calls[0] == {"staging": {KEY}, "production": {other}}
    assert calls[1] == calls[0]
    assert events.checks >= 1


def test_a_second_edit_by_one_writer_within_a_second_is_foreign() -> None:
    """managedFields times count seconds: a writer's second edit within the same second
    leaves its entry as it was, and only the content says something changed."""
    writers = [
        {"manager": "gitsync", "operation": "Apply", "fieldsV1": {"f:spec": {}}},
        {"manager": "kubectl-edit", "time": "2026-12-04T10:00:00Z", "fieldsV1": {"f:spec": {}}},
    ]
    first, second = obj(2, spec=2, writers=writers), obj(3, spec=3, writers=writers)
    assert Writes().foreign(KEY, first, second)


def live_rayservice() -> dict[str, Any]:
    """A RayService as the API server lists it: gitsync's fields, another writer's edit of
    serveConfigV2, and KubeRay's status write (the status subresource)."""
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": "ranker",
            "namespace": "ns",
            "generation": 2,
            "resourceVersion": "42",
            "selfLink": "/apis/ray.io/v1/namespaces/ns/rayservices/ranker",
            "labels": {"app.kubernetes.io/managed-by": "gitsync"},
            "annotations": {APPLIED_HASH: "h"},
            "managedFields": [
                {
                    "manager": "gitsync",
                    "operation": "Apply",
                    "apiVersion": "ray.io/v1",
                    "fieldsType": "FieldsV1",
                    "time": "2026-12-04T10:00:00Z",
                    "fieldsV1": {
                        "f:metadata": {"f:annotations": {f"f:{APPLIED_HASH}": {}}},
                        "f:spec": {"f:serveConfigV2": {}, "f:rayClusterConfig": {}},
                    },
                },
                {
                    "manager": "kubectl-edit",
                    "operation": "Update",
                    "apiVersion": "ray.io/v1",
                    "fieldsType": "FieldsV1",
                    "time": "2026-12-04T10:05:00Z",
                    "fieldsV1": {"f:spec": {"f:serveConfigV2": {}}},
                },
                {
                    "manager": "kuberay-operator",
                    "operation": "Update",
                    "subresource": "status",
                    "time": "2026-12-04T10:05:01Z",
                    "fieldsV1": {"f:status": {"f:activeServiceStatus": {}, "f:conditions": {}}},
                },
            ],
        },
        "spec": {"serveConfigV2": "applications: []\n", "rayClusterConfig": {}},
        "status": {
            "observedGeneration": 2,
            "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
            "activeServiceStatus": {
                "rayClusterName": "ranker-abc",
                "applicationStatuses": {
                    "rank": {
                        "status": "RUNNING",
                        "serveDeploymentStatuses": {"Ranker": {"status": "HEALTHY"}},
                    }
                },
            },
        },
    }


def test_every_reader_answers_the_same_on_the_kept_object() -> None:
    """What compaction drops (the status subresource's managedFields entries, their
    apiVersion and fieldsType, selfLink) is read by no one: ownership, attribution, who
    wrote, what a dry run is compared with, health and the plan's comparison answer the
    same on the object the cache keeps as on the object the API server sent."""
    full = live_rayservice()
    kept = freeze(full).thaw()
    assert [e["manager"] for e in kept["metadata"]["managedFields"]] == ["gitsync", "kubectl-edit"]
    body = {"metadata": {"annotations": {APPLIED_HASH: "h"}}, "spec": full["spec"]}
    assert untouched_since_apply(kept, body, "h") == untouched_since_apply(full, body, "h")
    paths = [("spec", "serveConfigV2"), ("status", "conditions")]
    assert owners(kept, paths) == owners(full, paths) == ("kubectl-edit",)
    assert _writers(kept) == _writers(full)
    sent = _content(full)
    sent["metadata"].pop("selfLink")
    assert _content(kept) == sent
    assert assess(kept) == assess(full)
    assert owned(kept) == owned(full)
    assert kept["spec"] == full["spec"]
    assert kept["status"] == full["status"]


def test_the_cache_keeps_frozen_copies_and_each_reader_gets_its_own() -> None:
    store, _ = informer()
    store._apply({"type": "ADDED", "object": live_rayservice()})
    first = store.get("ranker")
    assert first is not None
    first["spec"]["serveConfigV2"] = "changed by a careless reader"
    assert (store.get("ranker") or {})["spec"]["serveConfigV2"] == "applications: []\n"
    assert [o["metadata"]["name"] for o in store.read(bool)] == ["ranker"]
    assert store.read(lambda labels: "other" in labels) == []
    assert store.objects["ranker"].version == "42"


def test_a_read_of_some_names_decodes_those_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event-driven drift check of one object reads it, not its whole namespace."""
    store, _ = informer()
    for name in ("a", "b", "c"):
        store._apply({"type": "ADDED", "object": {**obj(1), "metadata": {"name": name}}})
    decoded: list[str] = []
    thaw = Kept.thaw
    monkeypatch.setattr(Kept, "thaw", lambda kept: decoded.append(kept.name) or thaw(kept))
    found = store.read(None, names={"b", "gone"})
    assert [o["metadata"]["name"] for o in found] == ["b"]
    assert decoded == ["b"]
    assert store.read(lambda labels: "other" in labels, names={"a"}) == []
    assert len(store.read()) == 3


def test_a_pass_that_found_nothing_to_change_settles_its_environments_drift() -> None:
    """A check on events right after such a pass checks the changed objects alone (the
    others are as Git wants them); a plan that changes anything, or one with reconciling
    disabled somewhere, leaves the next check whole."""
    config, problems = load_agent_config("repository: {url: file:///nowhere}\n")
    assert config is not None, problems
    checker = DriftChecker(config, None, None, None)  # type: ignore[arg-type]
    other = ServiceKey("ns", "embedder")
    checker._seen["staging"] = {(KEY, "an earlier finding")}
    checker.settle(unchanged_plan("staging", "ns", {KEY: 0, other: 1}, to_rev="abc"))
    assert checker._last["staging"] == DriftReport("staging", "abc")
    assert checker._seen["staging"] == set()  # made again, a finding is new
    checker.forget()
    checker.settle(
        unchanged_plan("staging", "ns", {KEY: 0}, to_rev="abc", disabled=frozenset({KEY}))
    )
    changed = unchanged_plan("staging", "ns", {KEY: 0}, to_rev="abc")
    wave = changed.waves[0]
    update = Change(KEY, Action.SERVE_UPDATE, 0, "serve update")
    checker.settle(replace(changed, waves=(replace(wave, changes=(update,)),)))
    assert "staging" not in checker._last
