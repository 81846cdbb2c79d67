"""``validate`` refuses what the RayService CRD's OpenAPI schema refuses, at file:line.

Each case changes one line of a valid RayService and names the line and the message the
problem must carry; tests/integration/test_crd_schema.py checks the real API server refuses
the same manifests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gitsync.checkout import read_tree
from gitsync.manifests.crd_schema import NODES, SPEC
from gitsync.manifests.schema import MAX_PROBLEMS, spec_problems

CONFIG = """environments:
  - name: staging
    path: environments/staging
    namespace: ray-staging
"""
FILE = "environments/staging/ranker.yaml"
BASE = """\
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: ranker
spec:
  excludeHeadPodFromServeSvc: false
  upgradeStrategy:
    type: NewCluster
  serveConfigV2: |
    applications:
      - name: app
        route_prefix: /app
        import_path: pkg.mod:app
  rayClusterConfig:
    enableInTreeAutoscaling: true
    autoscalerOptions:
      upscalingMode: Default
    headGroupSpec:
      rayStartParams:
        num-cpus: "0"
      template:
        spec:
          containers:
            - name: ray-head
              image: rayproject/ray:2.49.0
              args: ["--verbose"]
              ports:
                - containerPort: 8000
              resources:
                limits:
                  memory: 4Gi
    workerGroupSpecs:
      - groupName: cpu
        replicas: 3
        minReplicas: 1
        maxReplicas: 5
        template:
          spec:
            containers:
              - name: ray-worker
                image: rayproject/ray:2.49.0
"""
WORKER = "spec.rayClusterConfig.workerGroupSpecs[0]"
HEAD_CONTAINER = "spec.rayClusterConfig.headGroupSpec.template.spec.containers[0]"

# (id, the line as BASE writes it, the line in the bad manifest, its line number, message)
CASES = [
    (
        "replicas-a-word",
        "        replicas: 3",
        '        replicas: "three"',
        34,
        f'{WORKER}.replicas: must be an integer, not "three"',
    ),
    (
        "memory-not-a-quantity",
        "                  memory: 4Gi",
        "                  memory: 4Gib",
        31,
        f"{HEAD_CONTAINER}.resources.limits.memory: must be a quantity such as 4Gi, 500m or 2, "
        'not "4Gib"',
    ),
    (
        # No enum in the CRD: the API server accepts it and KubeRay refuses to reconcile it.
        "unknown-upgrade-type",
        "    type: NewCluster",
        "    type: BlueGreen",
        8,
        "spec.upgradeStrategy.type 'BlueGreen' is not one KubeRay knows",
    ),
    (
        # A core Pod takes `cpu: 0.5`; the CRD's int-or-string takes an integer or a string.
        "cpu-a-fraction",
        "                  memory: 4Gi",
        "                  memory: 4Gi\n                  cpu: 0.5",
        32,
        f"{HEAD_CONTAINER}.resources.limits.cpu: must be an integer or a string, not 0.5; "
        'quote it: "0.5"',
    ),
    (
        "ray-start-param-not-a-string",
        '        num-cpus: "0"',
        "        num-cpus: 0",
        20,
        "spec.rayClusterConfig.headGroupSpec.rayStartParams.num-cpus: must be a string, not 0; "
        'quote it: "0"',
    ),
    (
        "enum",
        "      upscalingMode: Default",
        "      upscalingMode: Fast",
        17,
        "spec.rayClusterConfig.autoscalerOptions.upscalingMode: must be one of Default, "
        'Aggressive, Conservative, not "Fast"',
    ),
    (
        "int32-range",
        "        maxReplicas: 5",
        "        maxReplicas: 3000000000",
        36,
        f"{WORKER}.maxReplicas: must fit a 32-bit integer (-2147483648 to 2147483647), not 3000000000",
    ),
    (
        "string-for-a-list",
        '              args: ["--verbose"]',
        "              args: --verbose",
        26,
        f'{HEAD_CONTAINER}.args: must be a list, not "--verbose"',
    ),
    (
        "string-for-an-integer-in-a-list",
        "                - containerPort: 8000",
        '                - containerPort: "8000"',
        28,
        f'{HEAD_CONTAINER}.ports[0].containerPort: must be an integer, not "8000"',
    ),
    (
        "string-for-a-boolean",
        "  excludeHeadPodFromServeSvc: false",
        '  excludeHeadPodFromServeSvc: "no"',
        6,
        'spec.excludeHeadPodFromServeSvc: must be true or false, not "no"',
    ),
    (
        "list-for-a-mapping",
        '        num-cpus: "0"',
        "        - num-cpus",
        19,
        "spec.rayClusterConfig.headGroupSpec.rayStartParams: must be a mapping, not a list",
    ),
    (
        "required-field-missing",
        "            - name: ray-head",
        "            - env: []",
        24,
        f"{HEAD_CONTAINER}: needs 'name'",
    ),
    (
        "group-name-a-number",
        "      - groupName: cpu",
        "      - groupName: 42",
        33,
        f"{WORKER}.groupName must be a non-empty string, not 42",
    ),
    (
        "duplicate-key-in-a-list-map",
        '              args: ["--verbose"]',
        '              env: [{name: A, value: "1"}, {name: A, value: "2"}]',
        26,
        f'{HEAD_CONTAINER}.env[1]: name "A" is already used by env[0]; the list is keyed by name',
    ),
    (
        # protocol is part of the key and defaults to TCP before the API server compares.
        "duplicate-key-by-its-default",
        "                - containerPort: 8000",
        "                - containerPort: 8000\n                - {containerPort: 8000, protocol: TCP}",
        29,
        f'{HEAD_CONTAINER}.ports[1]: containerPort 8000, protocol "TCP" is already used by '
        "ports[0]",
    ),
    (
        "unknown-field",
        '              args: ["--verbose"]',
        '              args: ["--verbose"]\n              imagePulPolicy: Always',
        27,
        f"{HEAD_CONTAINER}.imagePulPolicy: unknown field: the RayService CRD does not declare "
        "it and server-side apply refuses it; did you mean 'imagePullPolicy'?",
    ),
    (
        "null-list-item",
        "                - containerPort: 8000",
        "                - null",
        28,
        f"{HEAD_CONTAINER}.ports[0]: must be a mapping, not null",
    ),
    (
        "below-minimum",
        "  excludeHeadPodFromServeSvc: false",
        "  rayClusterDeletionDelaySeconds: -1",
        6,
        "spec.rayClusterDeletionDelaySeconds: must be at least 0, not -1",
    ),
]


# What the API server stores and KubeRay's ValidateRayClusterSpec refuses.
KUBERAY_CASES = [
    (
        "worker-without-containers",
        "            containers:\n              - name: ray-worker\n"
        "                image: rayproject/ray:2.49.0",
        "            containers: []",
        39,
        f"{WORKER}.template.spec.containers is empty: KubeRay needs the Ray container",
    ),
    (
        "suspended-with-the-autoscaler",
        "        minReplicas: 1",
        "        minReplicas: 1\n        suspend: true",
        36,
        "worker group 'cpu' cannot be suspended with the autoscaler enabled",
    ),
    (
        "redis-username",
        '        num-cpus: "0"',
        '        num-cpus: "0"\n        redis-username: admin',
        18,
        "a redis username in the head's rayStartParams or env: KubeRay refuses the cluster",
    ),
    (
        "autoscaler-v2-env-without-the-autoscaler",
        "    enableInTreeAutoscaling: true\n    autoscalerOptions:\n      upscalingMode: Default",
        "    enableInTreeAutoscaling: false",
        24,  # the env line: the rest of the base moves up two lines
        "head container env RAY_enable_autoscaler_v2=1 needs enableInTreeAutoscaling: true",
    ),
]
CASES += KUBERAY_CASES
V2_ENV = '              env: [{name: RAY_enable_autoscaler_v2, value: "1"}]'


def _validate(text: str, tmp_path: Path) -> list[tuple[str, int | None, str]]:
    (tmp_path / "gitsync.yaml").write_text(CONFIG)
    env = tmp_path / "environments" / "staging"
    env.mkdir(parents=True)
    (env / "ranker.yaml").write_text(text)
    return [(p.file, p.line, p.message) for p in read_tree(tmp_path).problems]


def mutated(good: str, bad: str) -> str:
    """BASE with one span changed (and, for the autoscaler v2 case, the head's env set)."""
    assert BASE.count(good + "\n") == 1
    text = BASE.replace(good + "\n", bad + "\n")
    if "enableInTreeAutoscaling: false" in bad:
        text = text.replace('              args: ["--verbose"]\n', V2_ENV + "\n")
    return text


def test_autoscaler_v2_needs_pods_that_never_restart(tmp_path: Path) -> None:
    text = BASE.replace("      upscalingMode: Default\n", "      version: v2\n").replace(
        "        spec:\n          containers:\n",
        "        spec:\n          restartPolicy: Always\n          containers:\n",
    )
    assert _validate(text, tmp_path) == [
        (
            FILE,
            23,
            "restartPolicy 'Always' with autoscaler v2: KubeRay refuses the cluster unless the "
            "Pods' restartPolicy is Never or unset",
        )
    ]


def test_the_base_manifest_is_valid(tmp_path: Path) -> None:
    assert _validate(BASE, tmp_path) == []


@pytest.mark.parametrize(
    ("good", "bad", "line", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_schema_violation_is_reported_at_its_line(
    good: str, bad: str, line: int, message: str, tmp_path: Path
) -> None:
    problems = _validate(mutated(good, bad), tmp_path)
    assert [(f, ln) for f, ln, m in problems if message in m] == [(FILE, line)], problems
    # One problem per mistake: the schema walk does not repeat what another check said.
    assert len(problems) == 1, problems


def test_a_list_item_is_checked_by_its_own_path() -> None:
    spec = {"rayClusterConfig": {"headGroupSpec": {"template": {}}, "workerGroupSpecs": [
        {"groupName": "a", "template": {}},
        {"groupName": "b", "template": {}, "replicas": "x"},
    ]}}  # fmt: skip
    assert spec_problems(spec) == [
        (
            ("spec", "rayClusterConfig", "workerGroupSpecs", 1, "replicas"),
            'must be an integer, not "x"',
        )
    ]


def test_null_is_absent_and_required_fields_with_defaults_are_not_required() -> None:
    # minReplicas and maxReplicas are required by the CRD but defaulted before validation.
    spec = {"rayClusterConfig": {"headGroupSpec": {"template": {}, "rayStartParams": None},
                                 "workerGroupSpecs": [{"groupName": "a", "template": {}}]}}  # fmt: skip
    assert spec_problems(spec) == []
    assert spec_problems({"rayClusterConfig": None}) == [(("spec",), "needs 'rayClusterConfig'")]


def test_go_anchors_a_pattern_at_the_very_end() -> None:
    # Python's `$` matches before a final newline; the API server's Go regexp does not.
    resources = {"limits": {"memory": "4Gi\n"}}
    spec = {"rayClusterConfig": {"headGroupSpec": {"template": {"spec": {"containers": [
        {"name": "c", "resources": resources}]}}}}}  # fmt: skip
    assert [m for _, m in spec_problems(spec)] == [
        'must be a quantity such as 4Gi, 500m or 2, not "4Gi\\n"'
    ]


def test_the_pod_template_is_stored_once() -> None:
    """The compact table shares the head's and the workers' pod template."""
    cluster = NODES[NODES[SPEC]["properties"]["rayClusterConfig"]]["properties"]
    head = NODES[cluster["headGroupSpec"]]["properties"]["template"]
    worker = NODES[NODES[cluster["workerGroupSpecs"]]["items"]]["properties"]["template"]
    assert head == worker
    assert len(NODES) < 400


def test_a_set_holds_each_value_once() -> None:
    rule = {"action": "Restart", "exitCodes": {"operator": "In", "values": [1, 2, 1]}}
    spec = {"rayClusterConfig": {"headGroupSpec": {"template": {"spec": {"containers": [
        {"name": "c", "restartPolicyRules": [rule]}]}}}}}  # fmt: skip
    containers = ("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers")
    assert spec_problems(spec) == [
        (
            (*containers, 0, "restartPolicyRules", 0, "exitCodes", "values", 2),
            "1 is already at values[0]; the list is a set",
        )
    ]


def test_a_hostile_spec_yields_a_bounded_number_of_problems() -> None:
    groups = [{"groupName": f"g{n}", "template": {}, "replicas": "x"} for n in range(50_000)]
    spec = {"rayClusterConfig": {"headGroupSpec": {"template": {}}, "workerGroupSpecs": groups}}
    problems = spec_problems(spec)
    assert len(problems) == MAX_PROBLEMS
    assert problems[-1][0] == ("spec", "rayClusterConfig", "workerGroupSpecs", 99, "replicas")


def test_an_object_without_properties_takes_any_field() -> None:
    """Only where the schema lists an object's fields is another one unknown."""
    container = {"name": "c", "resources": {"limits": {"example.com/fpga": "1"}}}
    spec = {"rayClusterConfig": {"headGroupSpec": {"template": {"spec": {"containers": [
        container]}}}}}  # fmt: skip
    assert spec_problems(spec) == []
    container["resourcez"] = {}
    assert [m for _, m in spec_problems(spec)] == [
        "unknown field: the RayService CRD does not declare it and server-side apply refuses "
        "it; did you mean 'resources'?"
    ]


def test_a_long_value_is_shortened_in_the_message() -> None:
    spec = {"rayClusterConfig": {"headGroupSpec": {"template": {}}, "workerGroupSpecs": [
        {"groupName": "a", "template": {}, "replicas": "x" * 100_000}]}}  # fmt: skip
    [(_, message)] = spec_problems(spec)
    assert message == 'must be an integer, not "' + "x" * 78 + "…"


def test_kuberay_rules_wait_for_a_well_typed_spec(tmp_path: Path) -> None:
    """A type error another check reports first must not reach KubeRay's rules, which read
    the spec as well-typed."""
    text = BASE.split("    workerGroupSpecs:\n", maxsplit=1)[0] + "    workerGroupSpecs: cpu\n"
    assert _validate(text, tmp_path) == [(FILE, 32, "workerGroupSpecs must be a list")]


@pytest.mark.parametrize(
    "path",
    [
        ("headGroupSpec", "template"),
        ("headGroupSpec", "template", "spec"),
        ("headGroupSpec", "template", "spec", "containers", 0),
        ("workerGroupSpecs", 0),
    ],
)
@pytest.mark.parametrize("value", ["x", 1, [1], None])
def test_a_wrong_type_anywhere_is_a_problem_not_a_crash(
    path: tuple[str | int, ...], value: object, tmp_path: Path
) -> None:
    doc = yaml.safe_load(BASE)
    parent = doc["spec"]["rayClusterConfig"]
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    problems = _validate(yaml.safe_dump(doc), tmp_path)
    assert problems, "a wrong type must be reported"
