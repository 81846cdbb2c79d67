"""The pure drift core: who changed a field, what healing would do, and the fight backoff."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from gitsync.diff.classify import Options
from gitsync.diff.drift import (
    Drift,
    DriftKind,
    corrections_left,
    field_lines,
    heal_cost,
    modified,
    owners,
    placed,
)
from gitsync.manifests.yamldoc import parse_documents
from gitsync.model import Action, FieldChange, ServiceKey
from gitsync.names import APPLIED_HASH
from gitsync.stamp import stamped, untouched_since_apply

KEY = ServiceKey("ray", "ranker")


def service(serve: str, image: str = "rayproject/ray:2.49.0") -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "ranker", "namespace": "ray"},
        "spec": {
            "serveConfigV2": serve,
            "rayClusterConfig": {
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [{"name": "ray-head", "image": image}]}},
                }
            },
        },
    }


SERVE = "applications:\n- name: rank\n  import_path: ranker.serve:app\n  deployments:\n  - name: Ranker\n    num_replicas: 1\n"


def managed_fields(*managers: tuple[str, dict[str, Any], str | None]) -> dict[str, Any]:
    return {
        "metadata": {
            "managedFields": [
                {
                    "manager": m,
                    "operation": "Update",
                    "fieldsV1": f,
                    **({"subresource": s} if s else {}),
                }
                for m, f, s in managers
            ]
        }
    }


def test_owners_skip_gitsync_and_status_writers() -> None:
    live = managed_fields(
        ("gitsync", {"f:spec": {"f:serveConfigV2": {}}}, None),
        ("kuberay-operator", {"f:spec": {"f:serveConfigV2": {}}}, "status"),
        ("kubectl-edit", {"f:spec": {"f:serveConfigV2": {}}}, None),
        ("kubectl-label", {"f:metadata": {}}, None),
    )
    assert owners(live, [("spec", "serveConfigV2")]) == ("kubectl-edit",)


HEAD = ("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers")


def test_only_the_manager_owning_the_drifted_field_is_named() -> None:
    """Two other managers own something under spec; only one owns what drifted."""
    live = service(SERVE.replace("num_replicas: 1", "num_replicas: 4"), image="ray:2.50.0")
    head = live["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    head["containers"].append({"name": "sidecar", "image": "busybox:2"})
    in_head = {"f:rayClusterConfig": {"f:headGroupSpec": {"f:template": {"f:spec": {}}}}}

    def containers(member: str) -> dict[str, Any]:
        fields = copy.deepcopy(in_head)
        fields["f:rayClusterConfig"]["f:headGroupSpec"]["f:template"]["f:spec"] = {
            "f:containers": {f'k:{{"name":"{member}"}}': {"f:image": {}}}
        }
        return {"f:spec": fields}

    live["metadata"].update(
        managed_fields(
            ("gitsync", {"f:spec": {"f:serveConfigV2": {}}}, None),
            ("kubectl-edit", {"f:spec": {"f:serveConfigV2": {}}}, None),
            ("policy", {"f:spec": {"f:rayClusterDeletionDelaySeconds": {}}}, None),
            ("kubectl-set", containers("ray-head"), None),
            ("sidecar-injector", containers("sidecar"), None),
        )["metadata"]
    )
    desired = service(SERVE)  # the dry run keeps the other managers' fields: the sidecar
    desired["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"].append(
        {"name": "sidecar", "image": "busybox:2"}
    )
    found = modified(KEY, live, desired, live, "a" * 40, Options())
    assert found is not None
    assert found.managers == ("kubectl-edit", "kubectl-set")
    assert owners(live, [("spec", "serveConfigV2")]) == ("kubectl-edit",)
    assert owners(live, [(*HEAD, "[ray-head]", "image")]) == ("kubectl-set",)
    assert owners(live, [(*HEAD, 1, "image")]) == ("sidecar-injector",)
    assert owners(live, [("spec", "rayClusterConfig", "rayVersion")]) == ()  # nobody: removed


def test_no_drift_when_equal() -> None:
    assert modified(KEY, service(SERVE), service(SERVE), {}, "a" * 40, Options()) is None


def test_a_serve_edit_heals_in_place() -> None:
    live = service(SERVE.replace("num_replicas: 1", "num_replicas: 4"))
    found = modified(
        KEY,
        live,
        service(SERVE),
        managed_fields(("kubectl-edit", {"f:spec": {}}, None)),
        "a" * 40,
        Options(),
    )
    assert found is not None
    assert found.kind is DriftKind.MODIFIED
    assert found.fields == ("spec.serveConfigV2",)
    # The structured change names the deployment's field: Git's value, then the live one.
    path = "spec.serveConfigV2.applications[rank].deployments[Ranker].num_replicas"
    assert found.changes == (FieldChange(path, 1, 4),)
    assert found.managers == ("kubectl-edit",)
    assert found.heal is not None
    assert found.heal.action is Action.SERVE_UPDATE
    assert "changed by kubectl-edit" in found.message
    assert heal_cost([found]) == []


def test_a_hand_edited_image_heals_by_a_swap_and_says_so() -> None:
    live = service(SERVE, image="rayproject/ray:2.50.0")
    found = modified(KEY, live, service(SERVE), {}, "a" * 40, Options())
    assert found is not None
    assert found.heal is not None
    assert found.heal.action is Action.CLUSTER_SWAP
    [cost] = heal_cost([found])
    assert "cluster swap" in cost
    assert "twice the cluster's resources" in cost


def test_a_drifted_field_a_patch_set_is_placed_at_the_patch_the_rest_at_the_service() -> None:
    """A rendered service: its document's file, and the overlay's patch for the fields it set
    (patched paths index list items; drift names them as ``keyed`` does)."""
    git = service(SERVE)
    git["spec"]["rayClusterConfig"]["workerGroupSpecs"] = [
        {"groupName": "cpu", "replicas": 3},
        {"groupName": "highmem", "replicas": 0, "maxReplicas": 8},
    ]
    live = copy.deepcopy(git)
    live["spec"]["serveConfigV2"] = SERVE.replace("num_replicas: 1", "num_replicas: 4")
    live["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["maxReplicas"] = 2
    found = modified(KEY, live, git, {}, "a" * 40, Options())
    assert found is not None
    patched = {
        ("spec", "rayClusterConfig", "workerGroupSpecs", 1, "maxReplicas"): ("patch.yaml", 7),
        ("spec", "rayClusterConfig", "workerGroupSpecs", 0, "replicas"): ("patch.yaml", 4),
    }
    at = placed(found, "base/ranker.yaml", 2, patched, git)
    group = "spec.rayClusterConfig.workerGroupSpecs[highmem].maxReplicas"
    serve = "spec.serveConfigV2.applications[rank].deployments[Ranker].num_replicas"
    assert {c.path for c in at.changes} == {group, serve}
    assert at.patched == ((group, "patch.yaml:7"),)  # the cpu group's patch did not drift
    assert (at.source_of(group), at.source_of(serve)) == ("patch.yaml:7", "base/ranker.yaml:2")
    assert at.sources == ("patch.yaml:7", "base/ranker.yaml:2")
    assert "(Git at aaaaaaaaaaaa: patch.yaml:7, base/ranker.yaml:2)" in at.message
    plain = placed(found, "environments/staging/ranker.yaml", 2, {}, git)
    assert (plain.patched, plain.sources) == ((), ("environments/staging/ranker.yaml:2",))


BASE = """\
# the ranker
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: ranker
spec:
  serveConfigV2: |
    applications:
    - name: rank
      deployments:
      - name: Ranker
        num_replicas: 1
  rayClusterConfig:
    workerGroupSpecs:
    - groupName: cpu
      replicas: 3
    - groupName: highmem
      maxReplicas: 8
"""


def test_a_drifted_field_no_patch_set_is_placed_at_its_own_line_in_the_file() -> None:
    """The fields a patch did not set are at their line in the service's file (the base):
    named list items by name, a serveConfigV2 block's fields inside the block, a field the
    file does not write at its nearest written parent."""
    [doc], problems = parse_documents(BASE, "base/ranker.yaml")
    assert not problems
    lines = field_lines(doc)
    serve = "spec.serveConfigV2.applications[rank].deployments[Ranker].num_replicas"
    group = "spec.rayClusterConfig.workerGroupSpecs[highmem].maxReplicas"
    assert (lines[serve], lines[group], lines["spec.serveConfigV2"]) == (12, 18, 7)
    git = yaml.safe_load(BASE)
    live = copy.deepcopy(git)
    live["spec"]["serveConfigV2"] = live["spec"]["serveConfigV2"].replace(": 1", ": 4")
    groups = live["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    groups[1]["maxReplicas"], groups[0]["rayStartParams"] = 2, {"num-cpus": "1"}
    found = modified(KEY, live, git, {}, "a" * 40, Options())
    assert found is not None
    patched = {("spec", "rayClusterConfig", "workerGroupSpecs", 1, "maxReplicas"): ("p.yaml", 4)}
    at = placed(found, "base/ranker.yaml", 2, patched, git, lines)
    added = "spec.rayClusterConfig.workerGroupSpecs[cpu].rayStartParams"
    assert at.source_of(group) == "p.yaml:4"
    assert at.source_of(serve) == "base/ranker.yaml:12"
    assert at.source_of(added) == "base/ranker.yaml:15"  # its group's line
    assert at.sources == ("p.yaml:4", "base/ranker.yaml:2")  # the message stays short


@pytest.mark.parametrize(
    ("history", "left"),
    [([], 3), ([100.0], 2), ([100.0, 200.0, 300.0], 0), ([-5000.0, 100.0, 200.0], 1)],
)
def test_corrections_left(history: list[float], left: int) -> None:
    assert corrections_left(history, now=400.0, limit=3, window=3600.0) == left


def test_messages_for_deleted_and_unexpected() -> None:
    assert "was deleted" in Drift(KEY, DriftKind.DELETED, "b" * 40).message
    assert "no longer declares" in Drift(KEY, DriftKind.UNEXPECTED, "b" * 40).message


def field_set(value: Any) -> Any:
    """The ``fieldsV1`` the API server records for applying ``value``: maps field by field,
    ``containers`` keyed by name (a list-map in the CRD), other lists atomic."""
    if not isinstance(value, dict):
        return {}
    found: dict[str, Any] = {}
    for key, item in value.items():
        if key == "containers":
            found[f"f:{key}"] = {
                f'k:{{"name":"{c["name"]}"}}': {".": {}, **field_set(c)} for c in item
            }
        else:
            found[f"f:{key}"] = field_set(item)
    return found


def applied() -> dict[str, Any]:
    manifest = service(SERVE)
    manifest["metadata"]["annotations"] = {"ray.io/initializing-timeout": "10m"}
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    head["containers"].append({"name": "sidecar", "image": "busybox"})
    return stamped(manifest, environment="staging", revision="a" * 40, source="r.yaml", wave=0)


APPLIED = applied()
CONTAINERS = ("f:spec", "f:rayClusterConfig", "f:headGroupSpec", "f:template", "f:spec",
              "f:containers")  # fmt: skip


def live_with(*entries: tuple[str, dict[str, Any], str | None]) -> dict[str, Any]:
    """The applied object as the API server returns it, with these managedFields."""
    metadata = {**APPLIED["metadata"], **managed_fields(*entries)["metadata"]}
    return {**APPLIED, "metadata": metadata}


def without(fields: dict[str, Any], *path: str) -> dict[str, Any]:
    pruned = copy.deepcopy(fields)
    node = pruned
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return pruned


MINE = field_set({"metadata": APPLIED["metadata"], "spec": APPLIED["spec"]})


@pytest.mark.parametrize(
    ("entries", "untouched"),
    [
        ([("gitsync", MINE, None)], True),
        ([("gitsync", MINE, None), ("kuberay-operator", {"f:status": {}}, "status")], True),
        # another manager's own annotation (KubeRay's, say) is not Git's: still untouched
        (
            [
                ("gitsync", MINE, None),
                ("kuberay", {"f:metadata": {"f:annotations": {"f:ray.io/other": {}}}}, None),
            ],
            True,
        ),
        # another manager owns an annotation Git declares
        (
            [
                ("gitsync", MINE, None),
                (
                    "kubectl-annotate",
                    {"f:metadata": {"f:annotations": {"f:ray.io/initializing-timeout": {}}}},
                    None,
                ),
            ],
            False,
        ),
        ([("gitsync", MINE, None), ("kubectl-edit", {"f:spec": {}}, None)], False),
        # a field removed by another client: no owner left, only gitsync's set shows it
        ([("gitsync", without(MINE, "f:spec", "f:serveConfigV2"), None)], False),
        ([("gitsync", without(MINE, *CONTAINERS, 'k:{"name":"sidecar"}'), None)], False),
        (
            [("gitsync", without(MINE, *CONTAINERS, 'k:{"name":"ray-head"}', "f:image"), None)],
            False,
        ),
        (
            [
                (
                    "gitsync",
                    without(MINE, "f:metadata", "f:annotations", "f:ray.io/initializing-timeout"),
                    None,
                )
            ],
            False,
        ),
    ],
)
def test_untouched_since_apply(
    entries: list[tuple[str, dict[str, Any], str | None]], untouched: bool
) -> None:
    assert untouched_since_apply(live_with(*entries), APPLIED) is untouched


def test_untouched_since_apply_needs_the_applied_hash() -> None:
    live = live_with(("gitsync", MINE, None))
    live["metadata"]["annotations"] = {**live["metadata"]["annotations"], APPLIED_HASH: "x"}
    assert not untouched_since_apply(live, APPLIED)
