"""Pull-request previews and plan comments end to end: a real Gitea (pull requests, refs,
comments, statuses), the real API server and the simulator."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from gitsync.cli import main
from gitsync.config import StatusConfig
from gitsync.errors import ForgeError
from gitsync.kube.rayservices import RayServicesClient
from gitsync.kube.state import StateStore
from gitsync.manifests.preview import PREVIEW
from gitsync.metrics import Metrics
from gitsync.plan import PLAN_COMMENT_MARKER as MARKER
from gitsync.previews import PreviewReconciler, _branch_number
from gitsync.report.factory import build_provider, build_pulls
from gitsync.report.gitea import gitea_headers
from gitsync.report.http import JsonClient
from gitsync.report.pulls import GiteaPulls
from gitsync.report.reporter import Reporter
from gitsync.source.config import TokenAuth
from gitsync.source.git import GitSource
from gitsync.sync import sync_once
from testbed.binaries import Binaries
from testbed.controlplane import ControlPlane
from testbed.gitea import Gitea
from testbed.simulator import Simulator
from tests.conftest import fresh_namespace

from .gitops import EXAMPLES, HELM, KUSTOMIZE, GitOpsRepo, edit, git
from .kube import GROUP, PLURAL, VERSION


class Forge:
    def __init__(
        self,
        gitea: Gitea,
        tmp_path: Path,
        namespace: str,
        *,
        example: Path = EXAMPLES,
        production: str | None = None,
        **previews: Any,
    ) -> None:
        """``example`` and ``production``: as for :class:`GitOpsRepo`."""
        self.gitea = gitea
        self.name = f"pr-{uuid.uuid4().hex[:8]}"
        self.previews_ns = f"pv-{uuid.uuid4().hex[:8]}"
        url = gitea.create_repo(self.name)
        self.repo = GitOpsRepo(
            tmp_path / "gitops",
            namespace,
            previews={"namespace": self.previews_ns, **previews},
            origin=url,
            push_args=gitea.git_auth_config(),
            example=example,
            production=production,
        )
        self.path = f"/repos/{gitea.admin}/{self.name}"
        token = tmp_path / "gitea-token"
        token.write_text(gitea.token)
        self.config = replace(
            self.repo.agent_config(tmp_path / "cache"),
            status=StatusConfig("gitea", token=TokenAuth(token_file=token)),
        )
        self.clock = [1_000_000.0]
        self.fork_url = ""

    def branch(self, name: str, change: Any, message: str = "change") -> str:
        work = self.repo.work
        git("checkout", "-q", "-B", name, "main", cwd=work)
        change(work)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", message, cwd=work)
        git(*self.repo.push_args, "push", "-q", "-f", "origin", name, cwd=work)
        sha = git("rev-parse", "HEAD", cwd=work)
        git("checkout", "-q", "main", cwd=work)
        return sha

    def open_pr(self, branch: str) -> int:
        # Gitea records a pushed branch from a queue, after the push returns: until then a
        # pull request from it is refused (404).
        deadline = time.monotonic() + 30
        while True:
            pr = self.gitea.api(
                "POST",
                f"{self.path}/pulls",
                {"head": branch, "base": "main", "title": branch},
                ok=(201, 404),
            )
            if "number" in pr:
                return int(pr["number"])
            assert time.monotonic() < deadline, f"Gitea never took branch {branch}: {pr}"
            time.sleep(0.1)

    def fork_pr(self, branch: str, change: Any) -> tuple[int, str]:
        """A pull request from a fork of a new user: (number, head SHA)."""
        user = f"contrib{uuid.uuid4().hex[:6]}"
        self.gitea.create_user(user)
        self.gitea.api("POST", f"{self.path}/forks", {}, sudo=user)
        fork_url = self.fork_url = f"{self.gitea.url}/{user}/{self.name}.git"
        work = self.repo.work
        git("checkout", "-q", "-B", branch, "main", cwd=work)
        change(work)
        git("commit", "-q", "-am", "from a fork", cwd=work)
        git(*self.repo.push_args, "push", "-q", fork_url, branch, cwd=work)
        sha = git("rev-parse", "HEAD", cwd=work)
        git("checkout", "-q", "main", cwd=work)
        pr = self.gitea.api(
            "POST", f"{self.path}/pulls",
            {"head": f"{user}:{branch}", "base": "main", "title": "from a fork"}, sudo=user,
        )  # fmt: skip
        return int(pr["number"]), sha

    def reconciler(self, api: client.ApiClient) -> tuple[PreviewReconciler, Reporter]:
        metrics = Metrics()
        reporter = Reporter(build_provider(self.config, metrics), metrics)
        return (
            PreviewReconciler(
                self.config,
                RayServicesClient(api),
                StateStore(api, self.repo.namespace),
                GitSource(self.config.repository),
                build_pulls(self.config, metrics),
                reporter,
                clock=lambda: self.clock[0],
            ),
            reporter,
        )

    def reconcile(self, api: client.ApiClient) -> list[Any]:
        reconciler, reporter = self.reconciler(api)
        try:
            return reconciler.reconcile()
        finally:
            reporter.close(timeout=30)

    def statuses(self, sha: str) -> dict[str, dict[str, Any]]:
        combined = self.gitea.api("GET", f"{self.path}/commits/{sha}/status")
        return {s["context"]: s for s in combined.get("statuses") or ()}

    def render(self, markdown: str) -> str:
        """``markdown`` as the forge shows a comment (Gitea's own renderer and sanitizer)."""
        request = urllib.request.Request(  # noqa: S310 - the test bed's loopback Gitea
            f"{self.gitea.url}/api/v1/markdown",
            data=json.dumps({"Text": markdown, "Mode": "comment"}).encode(),
            headers={"Authorization": f"token {self.gitea.token}",
                     "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return str(response.read().decode())

    def comments(self, number: int) -> list[str]:
        return [c["body"] for c in self.gitea.api("GET", f"{self.path}/issues/{number}/comments")]


def previews_in(api: client.ApiClient, namespace: str) -> dict[str, dict[str, Any]]:
    try:
        items = client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL
        )["items"]
    except client.ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    return {o["metadata"]["name"]: o for o in items}


# A user_config value that, pasted raw into the comment, would end the list and hide the rest.
HOSTILE_YAML = '"\\n\\n**No RayService changes** <!--"'


def scale_ranker(root: Path) -> None:
    path = root / "environments" / "staging" / "ranker.yaml"
    path.write_text(path.read_text().replace("num_replicas: 1", "num_replicas: 3", 1))


@pytest.fixture
def forge(
    gitea: Gitea, tmp_path: Path, namespace: str, api: client.ApiClient, sim: Simulator
) -> Forge:
    made = Forge(gitea, tmp_path, namespace)
    assert sync_once(
        made.config, RayServicesClient(api), StateStore(api, namespace)
    ).ok  # main deployed
    return made


def test_a_pull_request_gets_one_capped_preview_and_a_plan_comment(
    forge: Forge,
    api: client.ApiClient,
    namespace: str,
    tmp_path: Path,
    control_plane: ControlPlane,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sha = forge.branch("scale-ranker", scale_ranker)
    number = forge.open_pr("scale-ranker")
    [result] = forge.reconcile(api)
    assert (result.number, result.outcome) == (number, "succeeded")
    found = previews_in(api, forge.previews_ns)
    assert list(found) == [f"ranker-pr-{number}"]
    preview = found[f"ranker-pr-{number}"]
    assert preview["metadata"]["labels"][PREVIEW] == str(number)
    serve = yaml.safe_load(preview["spec"]["serveConfigV2"])
    for app in serve["applications"]:
        assert app["route_prefix"].startswith(f"/pr-{number}")
        for deployment in app.get("deployments") or ():
            assert deployment.get("num_replicas", 1) <= 1  # capped from 3
    for group in preview["spec"]["rayClusterConfig"].get("workerGroupSpecs") or ():
        assert group.get("replicas", 0) <= 1
        assert group.get("maxReplicas", 0) <= 1
    status = forge.statuses(sha)["gitsync/preview"]
    assert status["status"] == "success"
    assert f"ranker-pr-{number}" in status["description"]
    [comment] = forge.comments(number)
    assert "<!-- gitsync:plan -->" in comment
    assert "**`staging/ranker`**: `serve-update`" in comment
    # `gitsync previews` lists it: PR, service, revision, health, age.
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "repository": {"url": forge.repo.url, "branch": "main"},
                "cacheDir": str(tmp_path / "cache-cli"),
                "status": {"provider": "gitea", "tokenFile": str(tmp_path / "gitea-token")},
            }
        )
    )
    kubeconfig = str(control_plane.kubeconfig)
    assert main(["previews", "--config", str(config_file), "--kubeconfig", kubeconfig]) == 0
    listing = capsys.readouterr().out
    row = next(line for line in listing.splitlines() if f"ranker-pr-{number}" in line)
    assert row.split()[:3] == [f"#{number}", f"ranker-pr-{number}", sha[:12]]
    # Nothing outside the preview namespace changed: the main ranker still has 1 replica.
    live_ranker = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ranker"
    )
    assert "num_replicas: 1" in live_ranker["spec"]["serveConfigV2"]


def test_pushes_update_the_preview_and_the_comment_closing_deletes_it(
    forge: Forge, api: client.ApiClient, sim: Simulator
) -> None:
    forge.branch("scale", scale_ranker)
    number = forge.open_pr("scale")
    forge.reconcile(api)
    name = f"ranker-pr-{number}"
    first = previews_in(api, forge.previews_ns)[name]
    before = first["metadata"]["generation"]
    cluster = first["status"]["activeServiceStatus"]["rayClusterName"]

    def more(root: Path) -> None:
        scale_ranker(root)
        path = root / "environments" / "staging" / "ranker.yaml"
        path.write_text(
            path.read_text().replace("route_prefix: /rank", "route_prefix: /ranking", 1)
        )

    sha = forge.branch("scale", more, "rename the route")
    [result] = forge.reconcile(api)
    assert result.outcome == "succeeded"
    after = previews_in(api, forge.previews_ns)[name]
    assert after["metadata"]["generation"] > before
    assert after["metadata"]["annotations"]["gitsync.ray.io/revision"] == sha
    # A serve-update, as planned: the same RayCluster serves the new config, no swap.
    assert after["status"]["activeServiceStatus"]["rayClusterName"] == cluster
    assert not (after["status"].get("pendingServiceStatus") or {}).get("rayClusterName")
    # The head commit went pending (deploying) before success, in that order.
    history = forge.gitea.api("GET", f"{forge.path}/statuses/{sha}?sort=oldest&limit=50")
    states = [s["status"] for s in history if s["context"] == "gitsync/preview"]
    assert states == ["pending", "success"], states
    pending = next(s for s in history if s["status"] == "pending")
    assert pending["description"] == f"deploying preview: {name} serve-update"
    comments = forge.comments(number)
    assert len(comments) == 1  # edited in place, not duplicated
    assert sha[:12] in comments[0]
    # The tree cache keeps the base head and the open pull request's head, nothing older.
    trees = GitSource(forge.config.repository).trees_dir
    main_head = git("rev-parse", "main", cwd=forge.repo.work)
    assert {t.name for t in trees.iterdir() if t.is_dir()} == {main_head, sha}
    forge.gitea.api("PATCH", f"{forge.path}/pulls/{number}", {"state": "closed"})
    results = forge.reconcile(api)
    assert [(r.number, r.outcome) for r in results] == [(number, "deleted")]
    assert previews_in(api, forge.previews_ns) == {}
    assert {t.name for t in trees.iterdir() if t.is_dir()} == {main_head}


def test_a_preview_whose_reconcile_is_disabled_is_left_alone_on_the_next_push(
    forge: Forge, api: client.ApiClient
) -> None:
    """Previews plan as environments do: a preview RayService annotated
    gitsync.ray.io/reconcile=disabled (someone debugging it) is not rewritten by a push."""
    forge.branch("scale", scale_ranker)
    number = forge.open_pr("scale")
    forge.reconcile(api)
    name = f"ranker-pr-{number}"
    custom = client.CustomObjectsApi(api)
    patch = {"metadata": {"annotations": {"gitsync.ray.io/reconcile": "disabled"}}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, forge.previews_ns, PLURAL, name, patch)
    held = previews_in(api, forge.previews_ns)[name]

    def rename(root: Path) -> None:
        scale_ranker(root)
        path = root / "environments" / "staging" / "ranker.yaml"
        path.write_text(
            path.read_text().replace("route_prefix: /rank", "route_prefix: /ranking", 1)
        )

    forge.branch("scale", rename, "rename the route")
    forge.reconcile(api)
    after = previews_in(api, forge.previews_ns)[name]
    assert after["metadata"]["generation"] == held["metadata"]["generation"]
    assert after["spec"] == held["spec"]


def snapshot(api: client.ApiClient, namespace: str) -> dict[str, str]:
    """Every RayService and ConfigMap in ``namespace``: kind/name → resourceVersion."""
    services = previews_in(api, namespace)
    maps = client.CoreV1Api(api).list_namespaced_config_map(namespace).items
    return {
        **{f"RayService/{n}": o["metadata"]["resourceVersion"] for n, o in services.items()},
        **{f"ConfigMap/{m.metadata.name}": m.metadata.resource_version for m in maps},
    }


def test_a_manifest_naming_production_still_lands_only_in_the_preview_namespace(
    forge: Forge, api: client.ApiClient, namespace: str, sim: Simulator
) -> None:
    core = client.CoreV1Api(api)
    try:
        core.create_namespace({"metadata": {"name": "production"}})
    except client.ApiException as exc:
        if exc.status != 409:  # shared by the session: another test may have made it
            raise
    # Status writes of the simulator would move resourceVersions: only gitsync's writes count.
    # Excluded first, and a write already in flight let land, before anything is snapshotted.
    sim.exclude_namespaces |= {"production", namespace}
    sim.settle()
    custom = client.CustomObjectsApi(api)
    main_ranker = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ranker")
    resident = f"ranker-{uuid.uuid4().hex[:6]}"  # what runs in production, untouched by PRs
    try:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, "production", PLURAL,
            {"apiVersion": "ray.io/v1", "kind": "RayService",
             "metadata": {"name": resident, "labels": {"app.kubernetes.io/managed-by": "gitsync"}},
             "spec": main_ranker["spec"]},
        )  # fmt: skip
        before = {ns: snapshot(api, ns) for ns in ("production", namespace)}
        assert f"RayService/{resident}" in before["production"]

        def escape(root: Path) -> None:
            scale_ranker(root)
            path = root / "environments" / "staging" / "ranker.yaml"
            text = path.read_text()
            path.write_text(
                text.replace("name: ranker\n", "name: ranker\n  namespace: production\n", 1)
            )

        sha = forge.branch("escape", escape)
        number = forge.open_pr("escape")
        [result] = forge.reconcile(api)
        after = {ns: snapshot(api, ns) for ns in ("production", namespace)}
    finally:
        sim.exclude_namespaces -= {"production", namespace}
        custom.delete_namespaced_custom_object(GROUP, VERSION, "production", PLURAL, resident)
    # The preview ignores the manifest's namespace: it lands in the preview namespace only.
    assert (result.number, result.outcome) == (number, "succeeded")
    assert list(previews_in(api, forge.previews_ns)) == [f"ranker-pr-{number}"]
    assert forge.statuses(sha)["gitsync/preview"]["status"] == "success"
    # Nothing was written in production or in the environment's own namespace, but for the
    # preview's rollout state (rollout.stateNamespace, here the environment's namespace).
    state = f"ConfigMap/gitsync-rollout-preview-{number}"
    assert after["production"] == before["production"]
    assert {k: v for k, v in after[namespace].items() if k != state} == before[namespace]
    # For staging itself the manifest is invalid: the plan comment says so, and where.
    [comment] = forge.comments(number)
    assert "The pull request's manifests are invalid; nothing would be deployed" in comment
    assert "environments/staging/ranker.yaml:" in comment
    assert "metadata.namespace 'production' conflicts with environment 'staging'" in comment


def test_the_preview_limit_holds_back_newer_pull_requests(
    gitea: Gitea, tmp_path: Path, namespace: str, api: client.ApiClient, sim: Simulator
) -> None:
    forge = Forge(gitea, tmp_path, namespace, maxPreviews=1)
    assert sync_once(forge.config, RayServicesClient(api), StateStore(api, namespace)).ok
    first_sha = forge.branch("first", scale_ranker)
    first = forge.open_pr("first")
    second_sha = forge.branch("second", scale_ranker, "second")
    second = forge.open_pr("second")
    outcomes = {r.number: r.outcome for r in forge.reconcile(api)}
    assert outcomes == {first: "succeeded", second: "skipped"}
    assert list(previews_in(api, forge.previews_ns)) == [f"ranker-pr-{first}"]
    assert forge.statuses(first_sha)["gitsync/preview"]["status"] == "success"
    held = forge.statuses(second_sha)["gitsync/preview"]
    assert (held["status"], "previews.maxPreviews" in held["description"]) == ("pending", True)
    # The first closes: the second gets its preview at the next reconcile.
    forge.gitea.api("PATCH", f"{forge.path}/pulls/{first}", {"state": "closed"})
    outcomes = {r.number: r.outcome for r in forge.reconcile(api)}
    assert outcomes == {first: "deleted", second: "succeeded"}
    assert list(previews_in(api, forge.previews_ns)) == [f"ranker-pr-{second}"]


def test_the_preview_limit_holds_for_an_older_pull_request_that_becomes_eligible(
    gitea: Gitea, tmp_path: Path, namespace: str, api: client.ApiClient, sim: Simulator
) -> None:
    forge = Forge(gitea, tmp_path, namespace, maxPreviews=1)
    assert sync_once(forge.config, RayServicesClient(api), StateStore(api, namespace)).ok
    older, older_sha = forge.fork_pr("from-fork", scale_ranker)  # no label yet: no preview
    forge.branch("newer", scale_ranker, "newer")
    newer = forge.open_pr("newer")
    outcomes = {r.number: r.outcome for r in forge.reconcile(api)}
    assert outcomes == {older: "skipped", newer: "succeeded"}
    # A maintainer labels the older fork PR: it is eligible now, but the one place is taken.
    label = forge.gitea.api("POST", f"{forge.path}/labels", {"name": "preview", "color": "#00aabb"})
    forge.gitea.api("POST", f"{forge.path}/issues/{older}/labels", {"labels": [label["id"]]})
    outcomes = {r.number: r.outcome for r in forge.reconcile(api)}
    assert outcomes == {older: "skipped", newer: "unchanged"}
    assert list(previews_in(api, forge.previews_ns)) == [f"ranker-pr-{newer}"]
    held = forge.statuses(older_sha)["gitsync/preview"]
    assert (held["status"], "previews.maxPreviews" in held["description"]) == ("pending", True)


def test_the_plan_comment_is_gitsync_plan_and_only_gitsyncs_own_is_edited(
    forge: Forge,
    api: client.ApiClient,
    capsys: pytest.CaptureFixture[str],
    control_plane: ControlPlane,
) -> None:
    def two_changes(root: Path) -> None:
        scale_ranker(root)
        ranker = root / "environments" / "staging" / "ranker.yaml"
        text = ranker.read_text().replace('"2026-11-01"', HOSTILE_YAML)
        ranker.write_text(text)
        path = root / "environments" / "staging" / "embedder.yaml"
        path.write_text(path.read_text().replace("2.49.0", "2.50.0"))

    sha = forge.branch("two", two_changes)
    number = forge.open_pr("two")
    # Another user posts gitsync's marker first: it must not be taken for gitsync's comment.
    user = f"mallory{uuid.uuid4().hex[:6]}"
    forge.gitea.create_user(user)
    decoy = f"{MARKER}\nNo RayService changes: merging this deploys nothing."
    forge.gitea.api("POST", f"{forge.path}/issues/{number}/comments", {"body": decoy}, sudo=user)
    forge.reconcile(api)
    fork = git("merge-base", "main", sha, cwd=forge.repo.work)
    # The comment checks the new cluster's pods against the cluster, as --capacity does.
    plan = ["plan", str(forge.repo.work), "--from", fork, "--to", sha, "-o", "markdown"]
    plan += ["--capacity", "--kubeconfig", str(control_plane.kubeconfig)]
    assert main(plan) == 1
    expected = capsys.readouterr().out
    assert forge.comments(number) == [decoy, expected]
    assert "capacity: " in expected
    assert f"--to {sha[:12]} --capacity -o markdown" in expected
    assert "cluster-swap" in expected
    assert "twice the cluster's resources" in expected
    # Rendered by the forge itself, the hostile user_config value is text in a code span: it
    # ends no list, opens no HTML comment, and every change and the footer are still shown.
    html = forge.render(expected)
    assert "<!--" not in html.replace("&lt;!--", "")
    for shown in ("staging/embedder", "staging/ranker", "cluster-swap", "prints the same"):
        assert shown in html, (shown, html)
    assert re.search(r"<code>[^<]*No RayService changes\*\* &lt;!--", html), html
    assert html.count("<li>") == 2 + html.count("⚠") + html.count("✓"), html
    # A push edits gitsync's comment in place; the other one stays as its author wrote it.
    sha = forge.branch("two", scale_ranker, "only the ranker")
    forge.reconcile(api)
    assert main([*plan[:5], sha, *plan[6:]]) == 1
    expected = capsys.readouterr().out
    assert forge.comments(number) == [decoy, expected]
    assert "cluster-swap" not in expected


def test_limit_and_ttl(forge: Forge, api: client.ApiClient) -> None:
    numbers = []
    shas = []
    for index in range(2):
        shas.append(forge.branch(f"b{index}", scale_ranker, f"change {index}"))
        numbers.append(forge.open_pr(f"b{index}"))
    results = {r.number: r for r in forge.reconcile(api)}
    assert {n: results[n].outcome for n in numbers} == dict.fromkeys(numbers, "succeeded")
    # TTL: nothing changes for 73 hours → both previews are deleted, and not recreated until
    # their pull requests get a new commit.
    forge.clock[0] += 73 * 3600
    results_after = forge.reconcile(api)
    assert sorted((r.number, r.outcome) for r in results_after if r.outcome == "deleted") == [
        (n, "deleted") for n in numbers
    ]
    assert previews_in(api, forge.previews_ns) == {}
    again = {r.number: r.outcome for r in forge.reconcile(api)}
    assert again == dict.fromkeys(numbers, "skipped")
    assert "expired" in forge.statuses(shas[0])["gitsync/preview"]["description"]


def test_a_fork_pull_request_without_the_label_gets_no_preview(
    forge: Forge, api: client.ApiClient
) -> None:
    number, sha = forge.fork_pr("from-fork", scale_ranker)
    [result] = forge.reconcile(api)
    assert (result.number, result.outcome) == (number, "skipped")
    assert previews_in(api, forge.previews_ns) == {}
    status = forge.statuses(sha)["gitsync/preview"]
    assert status["status"] == "pending"
    assert "forks need the label 'preview'" in status["description"]
    # The plan comment is still written: reviewers see what merging would do.
    assert len(forge.comments(number)) == 1


def test_orphans_are_collected_and_merging_deletes_the_preview(
    forge: Forge, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    forge.branch("merge-me", scale_ranker)
    number = forge.open_pr("merge-me")
    forge.reconcile(api)
    # An orphan: a preview of a pull request that does not exist (say, its repo was renamed).
    orphan = previews_in(api, forge.previews_ns)[f"ranker-pr-{number}"]
    body = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": "ghost-pr-99",
            "namespace": forge.previews_ns,
            "labels": {"app.kubernetes.io/managed-by": "gitsync", PREVIEW: "99"},
        },
        "spec": orphan["spec"],
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, forge.previews_ns, PLURAL, body
    )
    results = forge.reconcile(api)
    assert (99, "deleted") in [(r.number, r.outcome) for r in results]
    assert list(previews_in(api, forge.previews_ns)) == [f"ranker-pr-{number}"]
    forge.gitea.api("POST", f"{forge.path}/pulls/{number}/merge", {"Do": "merge"})
    results = forge.reconcile(api)
    assert [(r.number, r.outcome) for r in results] == [(number, "deleted")]
    assert previews_in(api, forge.previews_ns) == {}
    # The merge is on main: the environment rolls it out.
    result = sync_once(forge.config, RayServicesClient(api), StateStore(api, namespace))
    assert result.ok
    live_ranker = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ranker"
    )
    assert "num_replicas: 3" in live_ranker["spec"]["serveConfigV2"]


def test_forge_less_previews_follow_branches(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    previews_ns = f"pv-{uuid.uuid4().hex[:8]}"
    repo = GitOpsRepo(
        tmp_path / "gitops", namespace, previews={"namespace": previews_ns, "branches": "preview/*"}
    )
    config = repo.agent_config(tmp_path / "cache")  # git notes: no forge
    assert sync_once(config, RayServicesClient(api), StateStore(api, namespace)).ok
    work = repo.work
    git("checkout", "-q", "-B", "preview/42", "main", cwd=work)
    scale_ranker(work)
    git("commit", "-q", "-am", "try a change", cwd=work)
    git("push", "-q", "origin", "preview/42", cwd=work)
    sha = git("rev-parse", "HEAD", cwd=work)
    git("checkout", "-q", "main", cwd=work)
    metrics = Metrics()
    reporter = Reporter(build_provider(config, metrics), metrics)
    reconciler = PreviewReconciler(
        config, RayServicesClient(api), StateStore(api, namespace), GitSource(config.repository),
        None, reporter,
    )  # fmt: skip
    try:
        [result] = reconciler.reconcile()
        assert (result.number, result.outcome) == (42, "succeeded")
        assert list(previews_in(api, previews_ns)) == ["ranker-pr-42"]
        git("push", "-q", "origin", "--delete", "preview/42", cwd=work)
        [gone] = reconciler.reconcile()
        assert (gone.number, gone.outcome) == (42, "deleted")
        assert previews_in(api, previews_ns) == {}
    finally:
        reporter.close(timeout=30)
    shown = build_provider(config, metrics).statuses(sha)
    assert shown["gitsync/preview"].state.value == "success"


@pytest.mark.parametrize(
    ("scopes", "comments"), [("write:repository,write:issue", True), ("write:repository", False)]
)
def test_the_documented_token_scopes_list_pull_requests_and_comment(
    gitea: Gitea, tmp_path: Path, scopes: str, comments: bool
) -> None:
    """docs/statuses.md: previews need `write:issue` besides the statuses' `write:repository`.
    Gitea files pull requests under the repository scope, their comments under issues: the
    listing works with `write:repository` alone, the plan comment does not."""
    made = Forge(gitea, tmp_path, "unused")
    sha = made.branch("scale", scale_ranker)
    number = made.open_pr("scale")
    token = tmp_path / "scoped-token"
    token.write_text(gitea.create_token(f"previews-{uuid.uuid4().hex[:8]}", scopes))
    client_ = JsonClient(gitea.url, lambda: gitea_headers(TokenAuth(token_file=token)))
    pulls = GiteaPulls(client_, f"{gitea.admin}/{made.name}")
    [pr] = pulls.open_pulls()
    assert (pr.number, pr.head_sha) == (number, sha)
    body = f"{MARKER}\nplan"
    if comments:
        pulls.upsert_comment(number, body)
        assert made.comments(number) == [body]
    else:
        with pytest.raises(ForgeError) as refused:
            pulls.upsert_comment(number, body)
        assert refused.value.status == 403
        assert made.comments(number) == []


def rename_staging(root: Path) -> None:
    """The PR's gitsync.yaml is valid but has no environment the base's ``previews.from``
    names: a ConfigError."""
    path = root / "gitsync.yaml"
    text = path.read_text()
    assert text.count(": staging\n") == 2  # the environment's name and previews.from
    path.write_text(text.replace(": staging\n", ": stage\n"))


def test_a_pull_request_tree_over_max_tree_size_is_refused_on_the_pull_request(
    forge: Forge, api: client.ApiClient
) -> None:
    forge.config = replace(
        forge.config, repository=replace(forge.config.repository, max_tree_bytes=2**20)
    )

    def big(root: Path) -> None:
        scale_ranker(root)
        (root / "data.bin").write_text("x" * 2 * 2**20)  # compresses to nothing; 2 MiB written

    sha = forge.branch("big", big)
    number = forge.open_pr("big")
    assert forge.reconcile(api) == []  # nothing read, nothing previewed
    assert previews_in(api, forge.previews_ns) == {}
    status = forge.statuses(sha)["gitsync/preview"]
    assert status["status"] == "failure"
    assert status["description"].startswith(f"not read: the tree of {sha[:12]} holds 2.0 MiB")
    [comment] = forge.comments(number)
    assert comment.startswith(MARKER)
    assert "largest: data.bin (2.0 MiB)" in comment
    assert "repository.maxTreeSize" in comment
    assert not any(sha in p.name for p in (forge.config.repository.cache_dir / "trees").iterdir())


def test_allowed_namespaces_keep_previews_out_of_a_namespace_the_agent_config_does_not_list(
    forge: Forge, api: client.ApiClient, namespace: str
) -> None:
    """With allowedNamespaces, gitsync.yaml's previews.namespace must be listed under
    pullRequests: else no preview runs there (and none is deleted), the pull request says why,
    and the plan comment is still written. Listed, the same pull request gets its preview."""
    confined = (("staging", (namespace,)), ("production", (namespace,)))
    forge.config = replace(forge.config, allowed_namespaces=confined)
    sha = forge.branch("scale-ranker", scale_ranker)
    number = forge.open_pr("scale-ranker")
    [result] = forge.reconcile(api)
    assert (result.number, result.outcome) == (number, "failed")
    assert "no pullRequests entry" in result.message
    assert previews_in(api, forge.previews_ns) == {}
    status = forge.statuses(sha)["gitsync/preview"]
    assert status["status"] == "failure"
    assert f"previews in namespace '{forge.previews_ns}'" in status["description"]
    assert [c for c in forge.comments(number) if c.startswith(MARKER)]  # plans are read-only
    forge.config = replace(
        forge.config, allowed_namespaces=(*confined, ("pullRequests", ("somewhere-else",)))
    )
    [result] = forge.reconcile(api)
    assert result.outcome == "failed"
    assert "allowedNamespaces.pullRequests: somewhere-else" in result.message
    assert previews_in(api, forge.previews_ns) == {}
    forge.config = replace(
        forge.config, allowed_namespaces=(*confined, ("pullRequests", (forge.previews_ns,)))
    )
    [result] = forge.reconcile(api)
    assert result.outcome == "succeeded"
    assert list(previews_in(api, forge.previews_ns)) == [f"ranker-pr-{number}"]
    # Taken out of the list again, the live preview is left alone rather than collected.
    forge.config = replace(forge.config, allowed_namespaces=confined)
    [result] = forge.reconcile(api)
    assert result.outcome == "failed"
    assert list(previews_in(api, forge.previews_ns)) == [f"ranker-pr-{number}"]


def foreign_manager(root: Path) -> None:
    """A manifest validate passes and the API server refuses (the CRD's CEL rule on
    ``rayClusterConfig.managedBy``, which validate leaves to it): the apply fails."""
    path = root / "environments" / "staging" / "ranker.yaml"
    text = path.read_text()
    assert text.count("  rayClusterConfig:\n") == 1
    path.write_text(
        text.replace("  rayClusterConfig:\n", "  rayClusterConfig:\n    managedBy: me\n")
    )


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [(rename_staging, "no environment 'staging'"), (foreign_manager, "ranker-pr-")],
)
def test_one_broken_pull_request_does_not_stop_the_others(
    forge: Forge, api: client.ApiClient, namespace: str, breakage: Any, reason: str
) -> None:
    broken_sha = forge.branch("broken", breakage)
    broken = forge.open_pr("broken")
    good_sha = forge.branch("good", scale_ranker)
    good = forge.open_pr("good")
    assert broken < good  # the broken one is processed first
    # An orphan, to show garbage collection still runs after the broken pull request.
    ranker = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "ranker"
    )
    ghost = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": "ghost-pr-99",
            "labels": {"app.kubernetes.io/managed-by": "gitsync", PREVIEW: "99"},
        },
        "spec": ranker["spec"],
    }
    client.CoreV1Api(api).create_namespace({"metadata": {"name": forge.previews_ns}})
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, forge.previews_ns, PLURAL, ghost
    )
    results = {r.number: r for r in forge.reconcile(api)}
    assert {n: r.outcome for n, r in results.items()} == {
        broken: "failed",
        good: "succeeded",
        99: "deleted",
    }
    assert list(previews_in(api, forge.previews_ns)) == [f"ranker-pr-{good}"]
    failed = forge.statuses(broken_sha)["gitsync/preview"]
    assert failed["status"] == "failure"
    assert reason in failed["description"], failed["description"]
    assert forge.statuses(good_sha)["gitsync/preview"]["status"] == "success"
    assert len(forge.comments(broken)) == len(forge.comments(good)) == 1


def test_a_pull_request_behind_main_previews_and_plans_only_its_own_change(
    forge: Forge, api: client.ApiClient
) -> None:
    fork = git("rev-parse", "main", cwd=forge.repo.work)
    sha = forge.branch("behind", scale_ranker)
    number = forge.open_pr("behind")

    def bump_embedder(root: Path) -> None:
        path = root / "environments" / "staging" / "embedder.yaml"
        path.write_text(path.read_text().replace("2.49.0", "2.50.0"))

    # main moves on after the PR branched (with more than the cache's shallow depth).
    forge.repo.commit(bump_embedder, "main moves on")
    for index in range(3):
        forge.repo.commit(lambda root: None, f"more on main {index}")
    [result] = forge.reconcile(api)
    assert (result.number, result.outcome, result.services) == (
        number, "succeeded", (f"ranker-pr-{number}",)
    )  # fmt: skip
    assert list(previews_in(api, forge.previews_ns)) == [f"ranker-pr-{number}"]
    [comment] = forge.comments(number)
    changes = [line for line in comment.splitlines() if line.startswith("- **")]
    assert [line.split("`")[1:4] for line in changes] == [
        ["staging/ranker", "**: ", "serve-update"]
    ]
    assert f"`{fork[:12]}` → `{sha[:12]}`" in comment


def test_forge_less_branches_with_names_get_a_preview_each(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> None:
    previews_ns = f"pv-{uuid.uuid4().hex[:8]}"
    repo = GitOpsRepo(
        tmp_path / "gitops", namespace, previews={"namespace": previews_ns, "branches": "preview/*"}
    )
    config = repo.agent_config(tmp_path / "cache")  # git notes: no forge
    assert sync_once(config, RayServicesClient(api), StateStore(api, namespace)).ok
    foo, bar = _branch_number("preview/foo"), _branch_number("preview/bar")
    assert foo != bar
    shas = {}
    # preview/x/<foo's number> gets the number preview/foo hashes to: a collision.
    for branch in ("preview/foo", "preview/bar", f"preview/x/{foo}"):
        work = repo.work
        git("checkout", "-q", "-B", branch, "main", cwd=work)
        scale_ranker(work)
        git("commit", "-q", "-am", f"try {branch}", cwd=work)
        git("push", "-q", "origin", branch, cwd=work)
        shas[branch] = git("rev-parse", "HEAD", cwd=work)
        git("checkout", "-q", "main", cwd=work)
    metrics = Metrics()
    reporter = Reporter(build_provider(config, metrics), metrics)
    reconciler = PreviewReconciler(
        config, RayServicesClient(api), StateStore(api, namespace), GitSource(config.repository),
        None, reporter,
    )  # fmt: skip
    try:
        results = reconciler.reconcile()
    finally:
        reporter.close(timeout=30)
    assert sorted((r.number, r.outcome) for r in results) == sorted(
        [(foo, "succeeded"), (bar, "succeeded")]
    )
    assert sorted(previews_in(api, previews_ns)) == sorted([f"ranker-pr-{foo}", f"ranker-pr-{bar}"])
    revisions = {
        name: o["metadata"]["annotations"]["gitsync.ray.io/revision"]
        for name, o in previews_in(api, previews_ns).items()
    }
    assert revisions == {
        f"ranker-pr-{foo}": shas["preview/foo"],
        f"ranker-pr-{bar}": shas["preview/bar"],
    }
    # By name, preview/foo comes first and keeps its number; the other branch is refused.
    shown = build_provider(config, metrics).statuses(shas[f"preview/x/{foo}"])
    assert shown["gitsync/preview"].state.value == "failure"
    assert f"gets number {foo}, as preview/foo does" in shown["gitsync/preview"].description


def privileged_ranker(root: Path) -> None:
    """A pull request that asks for the node: a privileged head on the host's network that
    also mounts the node's root and reads a Secret into a worker."""
    scale_ranker(root)
    path = root / "environments" / "staging" / "ranker.yaml"
    text = path.read_text().replace(
        "          containers:\n            - name: ray-head\n",
        "          hostNetwork: true\n"
        "          volumes: [{name: root, hostPath: {path: /}}]\n"
        "          containers:\n            - name: ray-head\n"
        "              securityContext: {privileged: true}\n",
        1,
    )
    text = text.replace(
        "                env:\n",
        "                env:\n"
        "                  - {name: DB, valueFrom: {secretKeyRef: {name: db, key: pw}}}\n",
        1,
    )
    path.write_text(text)


def test_the_pod_policy_refuses_a_privileged_preview_with_file_and_line(
    forge: Forge, api: client.ApiClient
) -> None:
    sha = forge.branch("take-the-node", privileged_ranker)
    number = forge.open_pr("take-the-node")
    [result] = forge.reconcile(api)
    assert (result.number, result.outcome) == (number, "failed")
    assert previews_in(api, forge.previews_ns) == {}  # nothing of the PR was applied
    # The lines are those of the pull request's own version of the file.
    head = git("show", f"{sha}:environments/staging/ranker.yaml", cwd=forge.repo.work)
    numbered = head.splitlines()
    where = {
        "hostNetwork": numbered.index("          hostNetwork: true") + 1,
        "hostPath": numbered.index("          volumes: [{name: root, hostPath: {path: /}}]") + 1,
        "privileged": numbered.index("              securityContext: {privileged: true}") + 1,
        "secret": next(i for i, line in enumerate(numbered, 1) if "secretKeyRef" in line),
    }
    problems = [str(p) for p in result_problems(result)]
    for what, line in where.items():
        assert any(f"environments/staging/ranker.yaml:{line}:" in p for p in problems), (
            what, problems,
        )  # fmt: skip
    status = forge.statuses(sha)["gitsync/preview"]
    assert status["status"] == "failure"
    assert status["description"].startswith(
        f"invalid: environments/staging/ranker.yaml:{where['hostNetwork']}: hostNetwork"
    ), status["description"]
    assert "(+3 more)" in status["description"]
    # The plan comment is still written: it runs nothing.
    assert len(forge.comments(number)) == 1


def result_problems(result: Any) -> list[str]:
    return [line.strip() for line in result.message.splitlines()[1:]]


def test_a_pull_request_cannot_relax_the_policy_in_its_own_gitsync_yaml(
    forge: Forge, api: client.ApiClient
) -> None:
    """The policy is the base branch's: a PR that turns it off in its gitsync.yaml, or strips
    instead of refusing, is still refused."""

    def relax(root: Path) -> None:
        privileged_ranker(root)
        config = yaml.safe_load((root / "gitsync.yaml").read_text())
        config["previews"]["policy"] = {"enabled": False}
        (root / "gitsync.yaml").write_text(yaml.safe_dump(config))

    sha = forge.branch("relax", relax)
    forge.open_pr("relax")
    [result] = forge.reconcile(api)
    assert result.outcome == "failed"
    assert previews_in(api, forge.previews_ns) == {}
    assert forge.statuses(sha)["gitsync/preview"]["status"] == "failure"


def test_a_stripping_policy_deploys_the_preview_without_the_fields(
    gitea: Gitea, tmp_path: Path, namespace: str, api: client.ApiClient, sim: Simulator
) -> None:
    strip = ["hostNamespaces", "hostPath", "privileged", "secrets"]
    forge = Forge(gitea, tmp_path, namespace, policy={"strip": strip})
    assert sync_once(forge.config, RayServicesClient(api), StateStore(api, namespace)).ok
    sha = forge.branch("strip", privileged_ranker)
    number = forge.open_pr("strip")
    [result] = forge.reconcile(api)
    assert (result.number, result.outcome) == (number, "succeeded"), result.message
    preview = previews_in(api, forge.previews_ns)[f"ranker-pr-{number}"]
    cluster = preview["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert "hostNetwork" not in head
    assert not head.get("volumes")
    assert "privileged" not in (head["containers"][0].get("securityContext") or {})
    env = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env] == ["RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S"]
    assert forge.statuses(sha)["gitsync/preview"]["status"] == "success"


def test_a_pull_request_over_the_service_and_worker_group_limits_gets_no_preview(
    gitea: Gitea, tmp_path: Path, namespace: str, api: client.ApiClient, sim: Simulator
) -> None:
    overrides = {"maxServices": 1, "maxWorkerGroups": 1}
    forge = Forge(gitea, tmp_path, namespace, overrides=overrides)
    assert sync_once(forge.config, RayServicesClient(api), StateStore(api, namespace)).ok

    def two_services(root: Path) -> None:
        scale_ranker(root)  # ranker has two worker groups
        path = root / "environments" / "staging" / "summarizer.yaml"
        path.write_text(path.read_text().replace("num_replicas: 1", "num_replicas: 2", 1))

    sha = forge.branch("too-big", two_services)
    forge.open_pr("too-big")
    [result] = forge.reconcile(api)
    assert result.outcome == "failed"
    assert previews_in(api, forge.previews_ns) == {}
    assert "previews.overrides.maxWorkerGroups" in result.message
    assert "previews.overrides.maxServices" in result.message
    status = forge.statuses(sha)["gitsync/preview"]
    assert status["status"] == "failure"


def test_the_fork_label_approves_one_commit_and_a_later_push_needs_it_again(
    forge: Forge, api: client.ApiClient
) -> None:
    """A maintainer labels a reviewed fork PR; the author pushes again: the new head is not
    deployed until a maintainer takes the label off and puts it back."""
    number, reviewed = forge.fork_pr("fork-approve", scale_ranker)
    label = forge.gitea.api("POST", f"{forge.path}/labels", {"name": "preview", "color": "#00aabb"})
    forge.gitea.api("POST", f"{forge.path}/issues/{number}/labels", {"labels": [label["id"]]})
    [result] = forge.reconcile(api)
    assert (result.outcome, result.revision) == ("succeeded", reviewed)
    name = f"ranker-pr-{number}"
    assert forge.statuses(reviewed)["gitsync/preview"]["status"] == "success"

    work = forge.repo.work  # the author pushes an unreviewed commit to the fork
    git("checkout", "-q", "fork-approve", cwd=work)
    path = work / "environments" / "staging" / "ranker.yaml"
    path.write_text(path.read_text().replace("route_prefix: /rank", "route_prefix: /x", 1))
    git("commit", "-q", "-am", "unreviewed", cwd=work)
    git(*forge.repo.push_args, "push", "-q", forge.fork_url, "fork-approve", cwd=work)
    unreviewed = git("rev-parse", "HEAD", cwd=work)
    git("checkout", "-q", "main", cwd=work)
    deadline = time.monotonic() + 30  # Gitea updates the pull request's head from a queue
    while forge.gitea.api("GET", f"{forge.path}/pulls/{number}")["head"]["sha"] != unreviewed:
        assert time.monotonic() < deadline, "Gitea never saw the push"
        time.sleep(0.2)
    [result] = forge.reconcile(api)
    assert result.outcome == "skipped"
    status = forge.statuses(unreviewed)["gitsync/preview"]
    assert status["status"] == "pending"
    assert f"pushed after the label 'preview' approved {reviewed[:12]}" in status["description"]
    live = previews_in(api, forge.previews_ns)[name]  # still the reviewed commit's
    assert live["metadata"]["annotations"]["gitsync.ray.io/revision"] == reviewed

    # The maintainer reviews it: label off (seen by a pass), label on.
    forge.gitea.api("DELETE", f"{forge.path}/issues/{number}/labels/{label['id']}")
    [result] = forge.reconcile(api)
    assert result.outcome == "skipped"
    forge.gitea.api("POST", f"{forge.path}/issues/{number}/labels", {"labels": [label["id"]]})
    [result] = forge.reconcile(api)
    assert (result.outcome, result.revision) == ("succeeded", unreviewed)
    live = previews_in(api, forge.previews_ns)[name]
    assert live["metadata"]["annotations"]["gitsync.ray.io/revision"] == unreviewed


@pytest.fixture
def renderers(binaries: Binaries, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test bed's kustomize (kubectl's) and helm, configured as an agent configures them."""
    monkeypatch.setenv("GITSYNC_KUSTOMIZE", str(binaries.kubectl))
    monkeypatch.setenv("GITSYNC_HELM", str(binaries.helm))


def planned(comment: str) -> set[tuple[str, str]]:
    """(environment/service, action) of each change a plan comment lists."""
    return set(re.findall(r"^- \*\*`([^`]+)`\*\*: `([^`]+)`", comment, re.MULTILINE))


def test_a_pull_request_changing_a_kustomize_base_previews_it_and_plans_every_overlay(
    renderers: None,
    gitea: Gitea,
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
) -> None:
    with fresh_namespace(api) as production:
        forge = Forge(gitea, tmp_path, namespace, example=KUSTOMIZE, production=production)
        # Nothing needs deploying first: the plan is Git against Git, the preview its own.

        def new_model(root: Path) -> None:
            edit(root / "base/ranker.yaml", '"2026-11-01"', '"2026-12-01"')

        sha = forge.branch("new-model", new_model, "a new ranker model, in the base only")
        number = forge.open_pr("new-model")
        [result] = forge.reconcile(api)
        name = f"ranker-pr-{number}"
        assert (result.number, result.outcome, result.services) == (number, "succeeded", (name,))
        preview = previews_in(api, forge.previews_ns)[name]
        serve = yaml.safe_load(preview["spec"]["serveConfigV2"])
        [ranker] = [d for d in serve["applications"][0]["deployments"] if d["name"] == "Ranker"]
        assert ranker["user_config"]["model_version"] == "2026-12-01"
        assert preview["metadata"]["annotations"]["gitsync.ray.io/source"] == "base/ranker.yaml"
        assert forge.statuses(sha)["gitsync/preview"]["status"] == "success"
        [comment] = forge.comments(number)
        assert planned(comment) == {
            ("staging/ranker", "serve-update"),
            ("production/ranker", "serve-update"),
        }

        # Only production's patch: staging renders as before, so no preview; the comment
        # plans production alone.
        def more_workers(root: Path) -> None:
            edit(root / "overlays/production/ranker-scale.yaml", "value: 3", "value: 4")

        other_sha = forge.branch("more-workers", more_workers, "production: four ranker workers")
        other = forge.open_pr("more-workers")
        results = {r.number: r for r in forge.reconcile(api)}
        assert results[other].services == ()
        assert results[number].outcome == "unchanged"
        status = forge.statuses(other_sha)["gitsync/preview"]
        assert (status["status"], status["description"]) == (
            "success",
            "no preview: this pull request changes no service of staging",
        )
        [comment] = forge.comments(other)
        assert planned(comment) == {("production/ranker", "scale-ineffective")}
        assert set(previews_in(api, forge.previews_ns)) == {name}

        # A staging patch making the head privileged: refused at the patch's line.
        def privileged(root: Path) -> None:
            (root / "overlays/staging/ranker-head.yaml").write_text(PRIVILEGED_PATCH)
            edit(
                root / "overlays/staging/kustomization.yaml",
                "  - ../../base\n",
                "  - ../../base\npatches:\n  - path: ranker-head.yaml\n"
                "    target: {kind: RayService, name: ranker}\n",
            )

        refused_sha = forge.branch("privileged", privileged, "a privileged ranker head")
        refused = forge.open_pr("privileged")
        results = {r.number: r for r in forge.reconcile(api)}
        assert results[refused].outcome == "failed"
        line = PRIVILEGED_PATCH.splitlines().index("  value: {privileged: true}") + 1
        problems = result_problems(results[refused])
        assert any(p.startswith(f"overlays/staging/ranker-head.yaml:{line}: ") for p in problems), (
            problems
        )
        assert forge.statuses(refused_sha)["gitsync/preview"]["status"] == "failure"
        assert set(previews_in(api, forge.previews_ns)) == {name}


PRIVILEGED_PATCH = """\
# The head container, privileged.
- op: add
  path: /spec/rayClusterConfig/headGroupSpec/template/spec/containers/0/securityContext
  value: {privileged: true}
"""


def test_a_pull_request_changing_a_charts_values_previews_and_plans_each_environment(
    renderers: None,
    gitea: Gitea,
    api: client.ApiClient,
    sim: Simulator,
    namespace: str,
    tmp_path: Path,
) -> None:
    with fresh_namespace(api) as production:
        forge = Forge(gitea, tmp_path, namespace, example=HELM, production=production)

        def new_artifact(root: Path) -> None:
            edit(root / "charts/ray-services/values.yaml", "ranker-2.3.1.zip", "ranker-2.4.0.zip")

        sha = forge.branch("new-artifact", new_artifact, "ranker 2.4.0 for every environment")
        number = forge.open_pr("new-artifact")
        [result] = forge.reconcile(api)
        name = f"ranker-pr-{number}"
        assert (result.outcome, result.services) == ("succeeded", (name,))
        preview = previews_in(api, forge.previews_ns)[name]
        assert "ranker-2.4.0.zip" in preview["spec"]["serveConfigV2"]
        assert forge.statuses(sha)["gitsync/preview"]["status"] == "success"
        [comment] = forge.comments(number)
        assert planned(comment) == {
            ("staging/ranker", "serve-update"),
            ("production/ranker", "serve-update"),
        }
