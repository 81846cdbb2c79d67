"""Masking (gitsync.mask): a secret value appears in no text gitsync writes: the plan as
text, diff, JSON and PR comment, the drift log line, and (tests/web) the status page."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gitsync.diff.classify import Options, classify, classify_object
from gitsync.diff.drift import Drift, DriftKind, heal_cost
from gitsync.mask import MASK, masked, secret_at
from gitsync.model import Action, ServiceKey
from gitsync.plan import build_plan, plan_diff, plan_json, plan_markdown, plan_table

KEY = ServiceKey("ray-prod", "ranker")
SECRET = "s3cr3t-value"  # every case puts it on one side; the other side has OTHER
OTHER = "0ther-value"


def service(serve: str = "", env: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "ray-head", "image": "rayproject/ray:2.9.0"}
    if env is not None:
        container["env"] = env
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": KEY.name, "namespace": KEY.namespace},
        "spec": {
            "serveConfigV2": serve,
            "rayClusterConfig": {
                "headGroupSpec": {"template": {"spec": {"containers": [container]}}}
            },
        },
    }


APP = "applications: [{name: rank, import_path: m:app, route_prefix: /r%s}]"
APP_ENV = "applications: [{name: rank, import_path: m:app, runtime_env: {env_vars: {K: %s}}}]"
TWO_APPS = (
    "applications: [{name: rank, import_path: m:app},"
    " {name: new, import_path: m:b, route_prefix: /n, runtime_env: {env_vars: {K: %s}}}]"
)
DEP = "applications: [{name: rank, import_path: m:app, deployments: [{name: R%s}]}]"
ACTOR = ", ray_actor_options: {num_cpus: 1, runtime_env: {env_vars: {K: %s}}}"
NEW_DEP = (
    "applications: [{name: rank, import_path: m:app, deployments: [{name: R},"
    " {name: S, ray_actor_options: {runtime_env: {env_vars: {K: %s}}}}]}]"
)

# (what, old object, new object): each has SECRET somewhere a diff reaches.
CASES = [
    (
        "container env value changed",
        service(env=[{"name": "TOKEN", "value": OTHER}]),
        service(env=[{"name": "TOKEN", "value": SECRET}]),
    ),
    (
        "container env entry added",
        service(env=[{"name": "A", "value": "a"}]),
        service(env=[{"name": "A", "value": "a"}, {"name": "TOKEN", "value": SECRET}]),
    ),
    (
        "container env list added (unnamed twice: compared by index)",
        service(),
        service(env=[{"name": "T", "value": SECRET}, {"name": "T", "value": OTHER}]),
    ),
    ("app env_vars value changed", service(APP_ENV % OTHER), service(APP_ENV % SECRET)),
    ("app runtime_env added", service(APP % ""), service(APP_ENV % SECRET)),
    ("app runtime_env removed", service(APP_ENV % SECRET), service(APP % "")),
    ("whole app added", service(APP % ""), service(TWO_APPS % SECRET)),
    ("whole app removed", service(TWO_APPS % SECRET), service(APP % "")),
    ("actor options added", service(DEP % ""), service(DEP % (ACTOR % SECRET))),
    ("actor env_vars changed", service(DEP % (ACTOR % OTHER)), service(DEP % (ACTOR % SECRET))),
    ("whole deployment added", service(DEP % ""), service(NEW_DEP % SECRET)),
    ("serve config stops parsing", service(APP_ENV % SECRET), service("[unparsable: " + SECRET)),
]


def texts(old: dict[str, Any], new: dict[str, Any], options: Options) -> dict[str, str]:
    """Every text a change becomes: plan table, diff, JSON, PR comment, drift log line."""
    change = classify(old, new, options)
    plan = build_plan("prod", KEY.namespace, {KEY: old}, {KEY: new}, options, prune=True)
    drift = Drift(KEY, DriftKind.MODIFIED, "a" * 40, heal=change)
    swap = Drift(KEY, DriftKind.MODIFIED, "a" * 40, heal=change.__class__(
        KEY, Action.CLUSTER_SWAP, 0, "", change.details
    ))  # fmt: skip
    return {
        "details": "\n".join(change.details),
        "fields": repr(change.fields),
        "table": plan_table(plan),
        "diff": plan_diff(plan, color=True),
        "json": json.dumps(plan_json(plan), ensure_ascii=False),
        "markdown": plan_markdown([plan], "a" * 40, "b" * 40),
        "log": drift.message + "\n".join(heal_cost([drift, swap])),
    }


@pytest.mark.parametrize(("what", "old", "new"), CASES, ids=[c[0] for c in CASES])
def test_no_text_holds_a_value(what: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    found = texts(old, new, Options())
    assert found["details"], f"{what}: the case must be a change"
    for where, text in found.items():
        assert SECRET not in text, f"{what}: the value is in the {where}"
        assert OTHER not in text, f"{what}: the value is in the {where}"
    assert MASK in found["fields"], f"{what}: the fields say a value was there"


@pytest.mark.parametrize(("what", "old", "new"), CASES, ids=[c[0] for c in CASES])
def test_show_env_values_reveals_them(what: str, old: dict[str, Any], new: dict[str, Any]) -> None:
    """ui.showEnvValues / --show-env-values: the values are there for whoever asked."""
    assert SECRET in texts(old, new, Options(show_env_values=True))["fields"], what


def test_the_name_of_a_changed_variable_stays() -> None:
    change = classify(service(APP_ENV % OTHER), service(APP_ENV % SECRET))
    assert change.details == (f"app rank: runtime_env.env_vars.K: {MASK} → {MASK}",)
    change = classify(
        service(env=[{"name": "TOKEN", "value": OTHER}]),
        service(env=[{"name": "TOKEN", "value": SECRET}]),
    )
    assert change.details == (
        "rayClusterConfig.headGroupSpec.template.spec.containers[ray-head].env[TOKEN].value: "
        f"{MASK} → {MASK}",
    )


def test_other_values_are_shown() -> None:
    """Masking is for values: an image, a route prefix, a valueFrom reference stay visible."""
    old = service(APP % "", env=[{"name": "T", "valueFrom": {"secretKeyRef": {"name": "a"}}}])
    new = service(APP % "2", env=[{"name": "T", "valueFrom": {"secretKeyRef": {"name": "b"}}}])
    new["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "image"
    ] = "rayproject/ray:2.10.0"
    text = "\n".join(classify(old, new).details)
    assert "/r → /r2" in text
    assert "rayproject/ray:2.9.0 → rayproject/ray:2.10.0" in text
    assert "valueFrom.secretKeyRef.name: a → b" in text


def secret_object(data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds", "namespace": "ray-prod"},
        "data": data,
    }


def test_secret_data_of_other_kinds_is_masked_configmaps_are_not() -> None:
    change = classify_object(secret_object({"k": OTHER}), secret_object({"k": SECRET, "n": "v2"}))
    assert change.details == (f"data.k: {MASK} → {MASK}", f"data.n added: {MASK}")
    config_map = {**secret_object({"k": OTHER}), "kind": "ConfigMap"}
    shown = classify_object(config_map, {**config_map, "data": {"k": SECRET}})
    assert SECRET in "\n".join(shown.details)


@pytest.mark.parametrize(
    ("path", "secret"),
    [
        (("runtime_env", "env_vars", "K"), True),
        (("applications", "a", "runtime_env", "env_vars"), False),  # the mapping: walked
        (("containers", "[h]", "env", "[T]", "value"), True),
        (("containers", 0, "env", 2, "value"), True),
        (("containers", "[h]", "env", "[T]", "valueFrom"), False),
        (("metadata", "labels", "env"), False),
        (("env", "[T]", "name"), False),
    ],
)
def test_secret_positions(path: tuple[str | int, ...], secret: bool) -> None:
    assert secret_at(path) is secret


def test_masked_walks_a_whole_object_and_keeps_absence() -> None:
    app = {"name": "a", "runtime_env": {"env_vars": {"A": "1", "B": "2"}, "pip": ["x"]}}
    assert masked(app) == {
        "name": "a",
        "runtime_env": {"env_vars": {"A": MASK, "B": MASK}, "pip": ["x"]},
    }
    assert masked(None, ("env_vars", "A")) is None
