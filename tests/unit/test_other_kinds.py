"""The other kinds a repository allows (allowedKinds): their health rule, classification,
their place in a wave, and the no-request proof that they are as applied."""

from __future__ import annotations

from typing import Any

import pytest

from gitsync.diff.classify import classify_object
from gitsync.diff.normalize import owned_object
from gitsync.model import Action, Health, ServiceKey
from gitsync.object_health import assess_object
from gitsync.plan import build_plan, plan_table
from gitsync.stamp import stamped, untouched_since_apply


def deployment(
    status: dict[str, Any] | None, generation: int = 2, replicas: int = 2
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ns", "generation": generation},
        "spec": {"replicas": replicas},
    }
    if status is not None:
        obj["status"] = status
    return obj


def available(status: str, reason: str = "MinimumReplicasAvailable") -> dict[str, Any]:
    return {"type": "Available", "status": status, "reason": reason}


READY = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
         "availableReplicas": 2, "conditions": [available("True")]}  # fmt: skip


@pytest.mark.parametrize(
    ("obj", "health", "says"),
    [
        (None, Health.MISSING, "not found"),
        ({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {}},
         Health.HEALTHY, "no status"),
        ({"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
          "metadata": {"name": "m", "generation": 1}, "spec": {}}, Health.HEALTHY, "no status"),
        (deployment(None), Health.PROGRESSING, "controller's status"),
        (deployment(READY), Health.HEALTHY, "Available True"),
        (deployment({**READY, "observedGeneration": 1}), Health.PROGRESSING, "generation 2"),
        (deployment({**READY, "readyReplicas": 1}), Health.PROGRESSING, "readyReplicas 1 of 2"),
        (deployment({**READY, "replicas": 3}), Health.PROGRESSING, "pending termination"),
        (deployment({**READY, "conditions": [available("False")]}), Health.PROGRESSING,
         "Available False"),
        (deployment({**READY, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
         Health.DEGRADED, "ProgressDeadlineExceeded"),
        ({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
          "metadata": {"name": "r", "generation": 1},
          "status": {"conditions": [{"type": "Ready", "status": "False",
                                     "reason": "ReconcileFailed", "message": "no gateway"}]}},
         Health.DEGRADED, "no gateway"),
        ({"apiVersion": "example.com/v1", "kind": "Thing",
          "metadata": {"name": "t", "generation": 3},
          "status": {"observedGeneration": 3,
                     "conditions": [{"type": "Stalled", "status": "True", "reason": "Bad"}]}},
         Health.DEGRADED, "Stalled True"),
        ({"apiVersion": "example.com/v1", "kind": "Thing",
          "metadata": {"name": "t", "generation": 3},
          "status": {"conditions": [{"type": "Reconciling", "status": "True"}]}},
         Health.PROGRESSING, "Reconciling"),
        ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s",
          "deletionTimestamp": "2026-01-01T00:00:00Z"}}, Health.PROGRESSING, "being deleted"),
    ],
)  # fmt: skip
def test_generic_health(obj: dict[str, Any] | None, health: Health, says: str) -> None:
    result = assess_object(obj)
    assert result.health is health
    assert says in result.message


def config_map(data: dict[str, str], wave: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "settings", "namespace": "ns"}
    if wave is not None:
        metadata["annotations"] = {"gitsync.ray.io/wave": wave}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


KEY = ServiceKey("ns", "settings", "ConfigMap", "v1")


def test_classify_object_like_kubectl_apply() -> None:
    old, new = owned_object(config_map({"a": "1"})), owned_object(config_map({"a": "2"}))
    assert classify_object(None, new).action is Action.CREATE
    assert classify_object(old, old).action is Action.UNCHANGED
    assert classify_object(old, None).action is Action.PRUNE
    changed = classify_object(old, new)
    assert (changed.key, changed.action, changed.details) == (
        KEY,
        Action.CONFIGURED,
        ("data.a: 1 → 2",),
    )


def test_status_and_server_metadata_are_not_compared() -> None:
    live = {**config_map({"a": "1"}), "status": {"x": 1}}
    live["metadata"] = {**live["metadata"], "uid": "u", "resourceVersion": "9",
                        "labels": {"app.kubernetes.io/managed-by": "gitsync"}}  # fmt: skip
    assert owned_object(live) == owned_object(config_map({"a": "1"}))


def test_other_kinds_go_first_in_their_wave_and_print_with_their_kind() -> None:
    service = {"apiVersion": "ray.io/v1", "kind": "RayService",
               "metadata": {"name": "aaa", "namespace": "ns"}, "spec": {}}  # fmt: skip
    plan = build_plan("env", "ns", {}, {ServiceKey("ns", "aaa"): service,
                                        KEY: owned_object(config_map({"a": "1"}))},
                      prune=True)  # fmt: skip
    assert [c.key for c in plan.waves[0].changes] == [KEY, ServiceKey("ns", "aaa")]
    assert "ConfigMap/settings  create" in plan_table(plan)
    assert str(KEY) == "ns/ConfigMap/settings"


@pytest.mark.parametrize(("prune", "action"), [(True, Action.PRUNE), (False, Action.ORPHAN)])
def test_a_pruned_object_is_planned_in_the_prune_wave(prune: bool, action: Action) -> None:
    current = {KEY: owned_object(config_map({"a": "1"}, "2"))}
    plan = build_plan("env", "ns", current, {}, prune=prune)
    assert [(w.prune, [c.action for c in w.changes]) for w in plan.waves] == [(True, [action])]


def managed_fields(manager: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"manager": manager, "operation": "Apply" if manager == "gitsync" else "Update",
            "fieldsType": "FieldsV1", "fieldsV1": fields}  # fmt: skip


def test_untouched_since_apply_reads_a_config_maps_data() -> None:
    body = stamped(config_map({"a": "1"}), environment="env", revision="r", source="s", wave=0)
    meta = body["metadata"]
    mine = {
        "f:data": {"f:a": {}},
        "f:metadata": {
            f"f:{part}": {f"f:{k}": {} for k in meta[part]} for part in ("labels", "annotations")
        },
    }
    live = {**body, "metadata": {**body["metadata"], "managedFields": [
        managed_fields("gitsync", mine)]}}  # fmt: skip
    assert untouched_since_apply(live, body)
    edited = {**live, "metadata": {**live["metadata"], "managedFields": [
        managed_fields("gitsync", {"f:metadata": {}}),
        managed_fields("kubectl-edit", {"f:data": {"f:a": {}}})]}}  # fmt: skip
    assert not untouched_since_apply(edited, body)
