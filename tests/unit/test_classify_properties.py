"""Properties of classification over random valid RayServices (hypothesis)."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitsync.diff.classify import classify
from gitsync.diff.normalize import owned
from gitsync.model import Action, ServiceKey
from gitsync.plan import build_plan

names = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
images = st.sampled_from(
    ["rayproject/ray:2.49.0", "rayproject/ray:2.50.0", "registry.local/ray:dev"]
)


@st.composite
def serve_configs(draw: st.DrawFn) -> str:
    apps = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    config = {
        "applications": [
            {
                "name": app,
                "route_prefix": f"/{app}",
                "import_path": f"{app}.serve:app",
                "deployments": [
                    {"name": d, "num_replicas": draw(st.integers(0, 8))}
                    for d in draw(st.lists(names, min_size=0, max_size=2, unique=True))
                ],
            }
            for app in apps
        ]
    }
    return yaml.safe_dump(
        config, default_flow_style=draw(st.booleans()), sort_keys=draw(st.booleans())
    )


@st.composite
def rayservices(draw: st.DrawFn) -> dict[str, Any]:
    groups = draw(st.lists(names, min_size=0, max_size=3, unique=True))
    spec: dict[str, Any] = {
        "serveConfigV2": draw(serve_configs()),
        "rayClusterConfig": {
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {"spec": {"containers": [{"name": "ray-head", "image": draw(images)}]}},
            },
            "workerGroupSpecs": [
                {
                    "groupName": g,
                    "replicas": draw(st.integers(0, 5)),
                    "minReplicas": draw(st.integers(0, 2)),
                    "maxReplicas": draw(st.integers(5, 10)),
                    "template": {
                        "spec": {"containers": [{"name": "ray-worker", "image": draw(images)}]}
                    },
                }
                for g in groups
            ],
        },
    }
    if draw(st.booleans()):
        spec["upgradeStrategy"] = {"type": draw(st.sampled_from(["NewCluster", "None"]))}
    metadata: dict[str, Any] = {"name": draw(names), "namespace": "ns"}
    if draw(st.booleans()):
        metadata["annotations"] = {"gitsync.ray.io/wave": str(draw(st.integers(0, 3)))}
    if draw(st.booleans()):
        metadata["labels"] = {"team": draw(names)}
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": metadata, "spec": spec}


@settings(max_examples=150, deadline=None)
@given(st.lists(rayservices(), min_size=1, max_size=5))
def test_plan_from_a_state_to_itself_is_all_unchanged(services: list[dict[str, Any]]) -> None:
    state = {ServiceKey("ns", s["metadata"]["name"]): owned(s) for s in services}
    plan = build_plan("env", "ns", state, state, prune=True)
    assert {c.action for c in plan.changes} == {Action.UNCHANGED}
    assert not plan.has_changes


@settings(max_examples=300, deadline=None)
@given(rayservices(), rayservices())
def test_classification_never_crashes_and_names_a_known_action(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    b["metadata"]["name"] = a["metadata"]["name"]
    change = classify(owned(a), owned(b))
    assert change.action in set(Action)
    assert (change.action is Action.UNCHANGED) == (owned(a) == owned(b))
    assert all(isinstance(d, str) and d for d in change.details)
