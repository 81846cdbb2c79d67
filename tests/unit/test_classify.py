"""Classification into KubeRay actions: one table row per case the issue names, and more."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitsync import kuberay
from gitsync.diff.classify import Options, classify
from gitsync.diff.normalize import owned
from gitsync.model import Action, ServiceKey
from gitsync.names import APPLIED_HASH
from gitsync.plan import build_plan, unchanged_plan
from gitsync.stamp import applied_hash, stamped, stamped_hash

RANKER = (
    Path(__file__).resolve().parents[2] / "examples/plain-layout/environments/staging/ranker.yaml"
)


def base() -> dict[str, Any]:
    obj = yaml.safe_load(RANKER.read_text())
    obj["metadata"]["namespace"] = "ray-staging"
    return obj


def head_image(o: dict[str, Any], image: str = "rayproject/ray:2.50.0-py311") -> None:
    for group in [
        o["spec"]["rayClusterConfig"]["headGroupSpec"],
        *o["spec"]["rayClusterConfig"]["workerGroupSpecs"],
    ]:
        group["template"]["spec"]["containers"][0]["image"] = image


def serve(o: dict[str, Any], old: str, new: str) -> None:
    assert old in o["spec"]["serveConfigV2"]
    o["spec"]["serveConfigV2"] = o["spec"]["serveConfigV2"].replace(old, new)


def replicas(o: dict[str, Any]) -> None:
    for group in o["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        group.update(replicas=5, minReplicas=2, maxReplicas=20)


def append_group(o: dict[str, Any]) -> None:
    groups = o["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    groups.append({**copy.deepcopy(groups[0]), "groupName": "gpu"})


def remove_group(o: dict[str, Any]) -> None:
    o["spec"]["rayClusterConfig"]["workerGroupSpecs"].pop()


def strategy_none(o: dict[str, Any]) -> None:
    o["spec"]["upgradeStrategy"]["type"] = "None"


def both(*edits: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def run(o: dict[str, Any]) -> None:
        for edit in edits:
            edit(o)

    return run


CASES = [
    ("unchanged", lambda o: None, Action.UNCHANGED, []),
    (
        "whitespace-only serveConfigV2",
        lambda o: o["spec"].__setitem__("serveConfigV2", o["spec"]["serveConfigV2"] + "\n\n"),
        Action.SERVE_REFORMAT,
        ["parses the same"],
    ),
    (
        "key order in serveConfigV2",
        lambda o: serve(
            o,
            "    route_prefix: /rank\n    import_path: ranker.serve:app\n",
            "    import_path: ranker.serve:app\n    route_prefix: /rank\n",
        ),
        Action.SERVE_REFORMAT,
        [],
    ),
    (
        "one deployment's num_replicas",
        lambda o: serve(o, "num_replicas: 1", "num_replicas: 3"),
        Action.SERVE_UPDATE,
        ["app rank: deployment Ranker: num_replicas: 1 → 3"],
    ),
    (
        "user_config",
        lambda o: serve(o, 'model_version: "2026-11-01"', 'model_version: "2026-11-20"'),
        Action.SERVE_UPDATE,
        ["app rank: deployment Ranker: user_config.model_version: 2026-11-01 → 2026-11-20"],
    ),
    (
        "autoscaling config",
        lambda o: serve(o, "max_replicas: 2", "max_replicas: 6"),
        Action.SERVE_UPDATE,
        ["app rank: deployment FeatureStore: autoscaling_config.max_replicas: 2 → 6"],
    ),
    (
        "import_path",
        lambda o: serve(o, "ranker.health:app", "ranker.health2:app"),
        Action.SERVE_UPDATE,
        ["app health: import_path: ranker.health:app → ranker.health2:app"],
    ),
    (
        "runtime_env",
        lambda o: serve(
            o,
            'EMBEDDER_URL: "http://embedder-serve-svc:8000/embed"',
            'EMBEDDER_URL: "http://embedder-v2:8000/embed"',
        ),
        Action.SERVE_UPDATE,
        ["app rank: runtime_env.env_vars.EMBEDDER_URL"],
    ),
    (
        "app added",
        lambda o: serve(
            o,
            "  - name: health\n",
            "  - name: extra\n    route_prefix: /extra\n    import_path: extra:app\n  - name: health\n",
        ),
        Action.SERVE_UPDATE,
        ["app extra: added (route_prefix /extra)"],
    ),
    (
        "app removed",
        lambda o: serve(
            o,
            "  - name: health\n    route_prefix: /health\n    import_path: ranker.health:app\n",
            "",
        ),
        Action.SERVE_UPDATE,
        ["app health: removed (route_prefix /health)"],
    ),
    (
        "image",
        head_image,
        Action.CLUSTER_SWAP,
        [
            "rayClusterConfig.headGroupSpec.template.spec.containers[ray-head].image: rayproject/ray:2.49.0-py311 → rayproject/ray:2.50.0-py311"
        ],
    ),
    (
        "image with upgradeStrategy None",
        both(strategy_none, head_image),
        Action.CLUSTER_IGNORED,
        ["image"],
    ),
    (
        "worker replicas only",
        replicas,
        Action.SCALE_INEFFECTIVE,
        ["rayClusterConfig.workerGroupSpecs[cpu].replicas: 1 → 5"],
    ),
    (
        "worker group appended",
        append_group,
        Action.CLUSTER_IN_PLACE,
        ["rayClusterConfig.workerGroupSpecs[gpu] added"],
    ),
    (
        "worker group removed",
        remove_group,
        Action.CLUSTER_SWAP,
        ["rayClusterConfig.workerGroupSpecs[highmem] removed"],
    ),
    (
        "label only",
        lambda o: o["metadata"].setdefault("labels", {}).__setitem__("team", "search"),
        Action.METADATA,
        ["metadata.labels added"],
    ),
    (
        "annotation only",
        lambda o: o["metadata"]["annotations"].__setitem__("owner", "search"),
        Action.METADATA,
        ["metadata.annotations.owner added: search"],
    ),
    (
        "setting KubeRay reads directly",
        lambda o: o["spec"].__setitem__("rayClusterDeletionDelaySeconds", 120),
        Action.METADATA,
        ["spec.rayClusterDeletionDelaySeconds added: 120"],
    ),
    (
        "serve and image",
        both(head_image, lambda o: serve(o, "num_replicas: 1", "num_replicas: 3")),
        Action.CLUSTER_SWAP,
        [
            "the new cluster gets the new Serve config",
            "app rank: deployment Ranker: num_replicas: 1 → 3",
        ],
    ),
    (
        "serve and replicas",
        both(replicas, lambda o: serve(o, "num_replicas: 1", "num_replicas: 3")),
        Action.SERVE_UPDATE,
        ["num_replicas: 1 → 3", "workerGroupSpecs[cpu].replicas: 1 → 5"],
    ),
    (
        "serve and image under strategy None",
        both(strategy_none, head_image, lambda o: serve(o, "num_replicas: 1", "num_replicas: 3")),
        Action.SERVE_UPDATE,
        ["num_replicas: 1 → 3"],
    ),
    (
        "only the gitsync revision stamp",
        lambda o: o["metadata"]["annotations"].__setitem__("gitsync.ray.io/revision", "abc"),
        Action.UNCHANGED,
        [],
    ),
    (
        "explicit CRD default",
        lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].__setitem__("numOfHosts", 1),
        Action.UNCHANGED,
        [],
    ),
]


@pytest.mark.parametrize(
    ("edit", "action", "details"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classification(
    edit: Callable[[dict[str, Any]], None], action: Action, details: list[str]
) -> None:
    before = base()
    after = copy.deepcopy(before)
    edit(after)
    change = classify(owned(before), owned(after))
    assert change.action is action, change
    text = "\n".join(change.details)
    for expected in details:
        assert expected in text, change.details
    assert change.wave == 1


def test_create_and_prune() -> None:
    obj = owned(base())
    assert classify(None, obj).action is Action.CREATE
    pruned = classify(obj, None)
    assert pruned.action is Action.PRUNE
    assert str(pruned.key) == "ray-staging/ranker"


def test_cluster_swap_warns_about_resources_and_repeated_edits() -> None:
    after = base()
    head_image(after)
    change = classify(owned(base()), owned(after))
    assert any("twice" in w for w in change.warnings)
    assert any("another new cluster" in w for w in change.warnings)


def test_serve_service_edit_warns_it_waits_for_the_next_switch() -> None:
    after = base()
    after["spec"]["serveService"] = {"metadata": {"name": "ranker-public"}}
    change = classify(owned(base()), owned(after))
    assert change.action is Action.METADATA
    assert any("next cluster switch" in w for w in change.warnings)


def test_operator_without_zero_downtime_ignores_cluster_changes() -> None:
    before, after = base(), base()
    del before["spec"]["upgradeStrategy"], after["spec"]["upgradeStrategy"]
    head_image(after)
    change = classify(owned(before), owned(after), Options(operator_zero_downtime=False))
    assert change.action is Action.CLUSTER_IGNORED
    assert "ENABLE_ZERO_DOWNTIME=false" in change.summary


@pytest.mark.parametrize(
    ("version", "edit", "action"),
    [
        (
            "v1.1.0",
            lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].__setitem__(
                "maxReplicas", 30
            ),
            Action.CLUSTER_SWAP,
        ),
        (
            "v1.2.2",
            lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].__setitem__(
                "maxReplicas", 30
            ),
            Action.SCALE_INEFFECTIVE,
        ),
        (
            "v1.2.2",
            both(strategy_none, head_image),
            Action.CLUSTER_SWAP,
        ),  # no upgradeStrategy field yet
        (
            "v1.5.0",
            lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"][
                "spec"
            ].__setitem__("tolerations", [{"key": "a", "operator": "Exists"}]),
            Action.CLUSTER_SWAP,
        ),
        (
            "v1.6.2",
            lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"][
                "spec"
            ].__setitem__("tolerations", [{"key": "a", "operator": "Exists"}]),
            Action.SCALE_INEFFECTIVE,
        ),
        (
            "v1.6.2",
            lambda o: o["spec"]["rayClusterConfig"].__setitem__("suspend", True),
            Action.CLUSTER_IN_PLACE,
        ),
        (
            "v1.5.0",
            lambda o: o["spec"]["rayClusterConfig"].__setitem__("suspend", True),
            Action.CLUSTER_SWAP,
        ),
    ],
)
def test_version_switch(
    version: str, edit: Callable[[dict[str, Any]], None], action: Action
) -> None:
    after = base()
    edit(after)
    options = Options(semantics=kuberay.semantics_for(version))
    assert classify(owned(base()), owned(after), options).action is action


def test_unknown_kuberay_version_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"unknown KubeRay version 'v0\.9\.0'"):
        kuberay.semantics_for("v0.9.0")


def test_a_plan_known_unchanged_is_the_plan_of_equal_objects() -> None:
    """The no-op fast path (metadata proves nothing changed) plans without comparing specs;
    it must be exactly what comparing equal objects plans."""
    objects = {}
    for name, wave in (("a", 1), ("b", 0), ("c", 1)):
        obj = base()
        obj["metadata"]["name"] = name
        obj["metadata"].setdefault("annotations", {})["gitsync.ray.io/wave"] = str(wave)
        objects[ServiceKey(obj["metadata"]["namespace"], name)] = owned(obj)
    compared = build_plan("prod", "serving", objects, objects, prune=True, to_rev="abc")
    waves = {key: int(o["metadata"]["annotations"]["gitsync.ray.io/wave"])
             for key, o in objects.items()}  # fmt: skip
    assert unchanged_plan("prod", "serving", waves, to_rev="abc") == compared
    assert not compared.has_changes


@pytest.mark.parametrize("annotated", [False, True])
def test_the_no_op_hash_is_the_hash_of_the_stamped_body(annotated: bool) -> None:
    manifest = base()
    if annotated:
        manifest["metadata"]["labels"] = {"team": "search"}
        manifest["metadata"]["annotations"] = {"gitsync.ray.io/wave": "2", "owner": "x"}
    before = copy.deepcopy(manifest)
    body = stamped(manifest, environment="prod", revision="f" * 40, source="a.yaml", wave=2)
    quick = stamped_hash(manifest, environment="prod", source="a.yaml", wave=2)
    assert quick == applied_hash(body) == body["metadata"]["annotations"][APPLIED_HASH]
    assert manifest == before  # nothing copied, nothing changed
