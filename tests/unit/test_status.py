"""What commit statuses say: contexts, states, descriptions ≤ 140 characters that name the
failing service and KubeRay's reason, file:line for invalid manifests, the targetUrl template."""

from __future__ import annotations

import pytest

from gitsync.model import Action, Problem, ServiceKey
from gitsync.report.status import (
    MAX_DESCRIPTION,
    CommitStatus,
    Describer,
    State,
    shorten,
    target_url_problem,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
RANKER = ServiceKey("ray-staging", "ranker")


def test_context_and_pending_description_say_what_is_happening() -> None:
    status = Describer(SHA).applying(
        "staging",
        1,
        2,
        [(RANKER, Action.CLUSTER_SWAP), (ServiceKey("x", "embedder"), Action.SERVE_UPDATE)],
    )
    assert status.context == "gitsync/staging"
    assert status.state is State.PENDING
    assert status.description == "applying wave 1/2: ranker cluster-swap, embedder serve-update"


def test_success_names_the_revision() -> None:
    status = Describer(SHA).healthy("production", 3)
    assert (status.state, status.description) == (
        State.SUCCESS,
        "Healthy at 0123456789ab: 3 service(s), every app RUNNING",
    )


def test_failure_names_the_service_app_and_kuberay_reason() -> None:
    message = (
        "ray-staging/ranker is Degraded: app ranker is DEPLOY_FAILED: Deploying app 'ranker' "
        "failed with exception: ImportError: no module named ranker_v2; later waves were not applied"
    )
    status = Describer(SHA).failed("staging", RANKER, message)
    assert status.state is State.FAILURE
    assert status.description.startswith("ranker Degraded: app ranker is DEPLOY_FAILED: Deploying")
    assert "later waves" not in status.description
    assert len(status.description) <= MAX_DESCRIPTION


def test_timeout_failure_keeps_the_reason() -> None:
    message = "ray-staging/ranker not Healthy after 600s (wave 1): Ready is False (Initializing)"
    status = Describer(SHA).failed("staging", RANKER, message)
    assert (
        status.description
        == "ranker not Healthy after 600s (wave 1): Ready is False (Initializing)"
    )


def test_invalid_manifest_gives_file_and_line_of_the_first_problem() -> None:
    problems = [
        Problem("environments/staging/ranker.yaml", 12, "spec.serveConfigV2 is not valid YAML"),
        Problem("environments/staging/embedder.yaml", 3, "metadata.name is missing"),
    ]
    status = Describer(SHA).invalid("staging", problems)
    assert status.state is State.FAILURE
    assert status.description == (
        "invalid: environments/staging/ranker.yaml:12: spec.serveConfigV2 is not valid YAML (+1 more)"
    )


@pytest.mark.parametrize("length", [139, 140, 141, 500])
def test_descriptions_never_exceed_140_characters(length: int) -> None:
    status = Describer(SHA).error("staging", "x" * length)
    assert len(status.description) <= MAX_DESCRIPTION
    if len("gitsync error: ") + length > MAX_DESCRIPTION:
        assert status.description.endswith("…")


def test_shorten_flattens_whitespace() -> None:
    assert shorten("a\n  b\tc") == "a b c"


def test_a_long_description_is_refused_by_the_value_itself() -> None:
    with pytest.raises(ValueError, match="longer than 140"):
        CommitStatus("gitsync/x", State.SUCCESS, "x" * 141)


def test_target_url_template() -> None:
    describe = Describer(
        SHA, "https://dash.example.com/d/ray?env={environment}&rev={short}&c={context}"
    )
    status = describe.healthy("staging", 1)
    assert status.target_url == (
        "https://dash.example.com/d/ray?env=staging&rev=0123456789ab&c=gitsync/staging"
    )
    assert Describer(SHA).healthy("staging", 1).target_url == ""


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("https://x/{environment}/{revision}", None),
        ("https://x/{env}", "uses {env}"),
        ("https://x/{", "not a valid template"),
    ],
)
def test_target_url_problems(template: str, problem: str | None) -> None:
    found = target_url_problem(template)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


def test_blocked_and_superseded_and_waiting() -> None:
    describe = Describer(SHA)
    blocked = describe.blocked("production", "gitsync/staging is failure at 0123456789ab: x")
    assert (blocked.state, blocked.description) == (
        State.FAILURE,
        "not rolled out: gitsync/staging is failure at 0123456789ab: x",
    )
    superseded = describe.superseded("staging", "fedcba9876543210fedcba9876543210fedcba98")
    assert superseded.state is State.ERROR
    assert superseded.description == "superseded by fedcba987654 before it was Healthy"
    waiting = describe.waiting_for("production", "staging", "no status yet")
    assert waiting.state is State.PENDING
    assert "gitsync/staging: success at 0123456789ab" in waiting.description


def test_a_waiting_wave_says_why_its_pods_do_not_run_when_known() -> None:
    describe = Describer(SHA)
    keys = [ServiceKey("ray", "summarizer")]
    plain = describe.waiting("staging", 1, 2, keys)
    assert plain.description == "waiting for wave 1/2 to be Healthy: summarizer"
    why = "summarizer: 1 pod unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu"
    explained = describe.waiting("staging", 1, 2, keys, why)
    assert explained.state is State.PENDING
    assert explained.description == f"wave 1/2 waits: {why}"
