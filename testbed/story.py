"""The story ``make demo`` tells (testbed/demo_bed.py starts what it drives).

Six chapters, each a change a Ray platform team makes in Git and what gitsync does with it,
shown with gitsync's own output (its plan, its log, the commit statuses it posts on Gitea,
``gitsync status``), and checked: a chapter whose outcome is not the one told raises
:class:`~testbed.demo_bed.DemoError`, so ``make demo`` cannot tell a story that did not happen.
On real Ray (``--ray real``) the chapters also show Ray Serve's own answers through the serve
Services, and the cluster swap counts the requests sent through it (none may fail).
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from gitsync.kube.state import StateStore
from gitsync.model import Phase
from testbed.demo_bed import BROKEN_IMPORT, STATE_NAMESPACE, Bed, DemoError, git, start_agent
from testbed.demo_ray import Traffic, answer_field, answer_line

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayservices"
STAGING, PRODUCTION, PREVIEWS = "ray-staging", "ray-production", "ray-previews"
FINAL = ("success", "failure", "error")


def tell(bed: Bed) -> None:
    initial_deployment(bed)
    serve_update(bed)
    cluster_swap(bed)
    broken_commit(bed)
    pull_request_preview(bed)
    drift_self_heal(bed)


# -- the chapters --------------------------------------------------------------------------


def initial_deployment(bed: Bed) -> None:
    out = bed.out
    out.step("1/6  Initial deployment: staging first, production after it (after: [staging])")
    out.note("The team's repository is examples/plain-layout/; `gitsync validate` checks it:")
    code, text = bed.gitsync("validate", ".")
    out.block(text)
    if code != 0:
        raise DemoError(f"gitsync validate found problems in the example repository:\n{text}")
    sha = bed.push("Ray services: staging and production")
    out.note(f"pushed {sha[:12]} to main; starting `gitsync run` (its log lines: gitsync │)")
    bed.agent = start_agent(bed)
    bed.record_pids()
    final = follow(bed, sha, {"gitsync/staging": "success", "gitsync/production": "success"})
    staged = final["gitsync/staging"]["created_at"]
    first_production = min(
        o["metadata"]["creationTimestamp"] for o in rayservices(bed, PRODUCTION).values()
    )
    if _time(first_production) < _time(staged):
        raise DemoError(
            f"production's first RayService was created at {first_production}, before "
            f"staging was Healthy ({staged})"
        )
    out.note(
        f"staging was Healthy at {staged}; production's first RayService was created at "
        f"{first_production}: the order held."
    )
    show_status(bed)
    if bed.ray:
        out.note("Ray Serve answers through the serve Services (kube-proxy stand-in):")
        for ns in (STAGING, PRODUCTION):
            show_answer(bed, ns, "embedder", "/embed?text=hello")
            show_answer(bed, ns, "ranker", "/rank")
        show_answer(bed, PRODUCTION, "ranker", "/health")


def serve_update(bed: Bed) -> None:
    out = bed.out
    out.step("2/6  A Serve-only change: a new model version for the ranker (in-place update)")
    before = {ns: active_cluster(bed, ns, "ranker") for ns in (STAGING, PRODUCTION)}
    for env in ("staging", "production"):
        edit(bed.work, env, "ranker", 'model_version: "2026-11-01"', 'model_version: "2026-11-20"')
    sha = commit_with_plan(bed, "ranker: model 2026-11-20")
    follow(bed, sha, {"gitsync/staging": "success", "gitsync/production": "success"})
    for ns, cluster in before.items():
        now = active_cluster(bed, ns, "ranker")
        if now != cluster:
            raise DemoError(f"{ns}/ranker moved from {cluster} to {now}: not an in-place update")
        out.note(f"{ns}/ranker still runs on RayCluster {now}: Serve was updated in place.")
    if bed.ray:
        for ns, cluster in before.items():
            body = wait_for_answer(bed, ns, "ranker", "/rank", "model_version", "2026-11-20")
            if answer_field(body, "cluster") != cluster:
                raise DemoError(f"{ns}/ranker answered from another cluster: {body}")
            out.note(f"$ curl {ns}/ranker-serve-svc:8000/rank")
            out.block(answer_line(200, body))
        out.note("The running replicas took the new user_config: no restart, no new cluster.")


def cluster_swap(bed: Bed) -> None:
    out = bed.out
    out.step("3/6  An image change: a zero-downtime cluster swap, gated on the new cluster")
    before = {ns: active_cluster(bed, ns, "embedder") for ns in (STAGING, PRODUCTION)}
    for env in ("staging", "production"):
        edit(
            bed.work, env, "embedder", "rayproject/ray:2.49.0-py311", "rayproject/ray:2.49.1-py311"
        )
    traffic = {}
    if bed.ray:
        for ns in (STAGING, PRODUCTION):
            traffic[ns] = Traffic(bed.ray.url(ns, "embedder") + "/embed?text=hello").start()
        out.note("requests go to embedder-serve-svc in both namespaces, one after another,")
        out.note("from now until the swaps are done; every answer is counted")
    try:
        sha = commit_with_plan(bed, "embedder: Ray image 2.49.1")
        swap_and_check(bed, sha, before)
    finally:
        for load in traffic.values():
            load.stop()
    for ns, load in traffic.items():
        clusters = load.clusters()
        out.note(
            f"{ns}/embedder: {len(load.answers)} requests through the swap, {load.failed} "
            f"failed; answered by {' then '.join(clusters)}"
        )
        if load.failed or clusters != [before[ns], active_cluster(bed, ns, "embedder")]:
            raise DemoError(f"{ns}/embedder: traffic did not move once, whole, to the new cluster")
    if traffic:
        out.note("Serve answered throughout: KubeRay switched the serve Service at promotion.")


def swap_and_check(bed: Bed, sha: str, before: dict[str, str]) -> None:
    out = bed.out
    seen: set[str] = set()

    def during_swap() -> None:
        for ns in (STAGING, PRODUCTION):
            status = (rayservice(bed, ns, "embedder") or {}).get("status") or {}
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or ()}
            pending = (status.get("pendingServiceStatus") or {}).get("rayClusterName")
            if conditions.get("UpgradeInProgress") == "True" and ns not in seen:
                seen.add(ns)
                out.note(
                    f"KubeRay on {ns}/embedder: Ready={conditions.get('Ready')}, "
                    f"UpgradeInProgress=True, pending cluster {pending}. A generic health "
                    "check calls this Ready; gitsync waits for the switch."
                )

    follow(
        bed,
        sha,
        {"gitsync/staging": "success", "gitsync/production": "success"},
        also=during_swap,
    )
    for ns, cluster in before.items():
        now = active_cluster(bed, ns, "embedder")
        if now == cluster:
            raise DemoError(f"{ns}/embedder still runs on {cluster}: no cluster swap happened")
        out.note(f"{ns}/embedder switched from RayCluster {cluster} to {now}.")


def broken_commit(bed: Bed) -> None:
    out = bed.out
    out.step("4/6  A broken change: a typo in the ranker's import path")
    production = rayservice(bed, PRODUCTION, "ranker") or {}
    revision = production["metadata"]["annotations"]["gitsync.ray.io/revision"]
    generation = production["metadata"]["generation"]
    for env in ("staging", "production"):
        edit(
            bed.work,
            env,
            "ranker",
            f"import_path: {bed.import_path('ranker.serve:app')}",
            f"import_path: {bed.import_path(BROKEN_IMPORT)}",
        )
    sha = commit_with_plan(bed, "ranker: move the app to ranker.serving")
    final = follow(bed, sha, {"gitsync/staging": "failure", "gitsync/production": "failure"})
    after = rayservice(bed, PRODUCTION, "ranker") or {}
    if (
        after["metadata"]["generation"] != generation
        or after["metadata"]["annotations"]["gitsync.ray.io/revision"] != revision
    ):
        raise DemoError("production's ranker was changed by the broken commit")
    out.note(f"The commit says why: {final['gitsync/staging']['description']}")
    out.note(f"production/ranker is untouched: generation {generation}, revision {revision[:12]}.")
    if bed.ray:
        show_answer(bed, PRODUCTION, "ranker", "/rank")
    out.note("The fix is a revert, rolled out like any commit:")
    git("revert", "--no-edit", "HEAD", cwd=bed.work)
    git(*bed.gitea.git_auth_config(), "push", "-q", "origin", "main", cwd=bed.work)
    fix = git("rev-parse", "HEAD", cwd=bed.work)
    out.note(f"pushed {fix[:12]} (Revert)")
    follow(bed, fix, {"gitsync/staging": "success", "gitsync/production": "success"})


def pull_request_preview(bed: Bed) -> None:
    out = bed.out
    out.step("5/6  A pull request: a plan comment and a preview of the services it changes")
    service = bed.preview_service
    branch = f"{service}-replicas"
    git("checkout", "-q", "-b", branch, cwd=bed.work)
    edit(bed.work, "staging", service, "num_replicas: 1", "num_replicas: 2")
    head = bed.push(f"{service}: two replicas in staging", branch=branch)
    git("checkout", "-q", "main", cwd=bed.work)
    pr = bed.gitea.api(
        "POST",
        f"/repos/{bed.owner_repo}/pulls",
        {"head": branch, "base": "main", "title": f"{service}: two replicas in staging"},
    )
    number = int(pr["number"])
    out.note(f"opened pull request #{number} ({bed.gitea.url}/{bed.owner_repo}/pulls/{number})")
    follow(bed, head, {"gitsync/preview": "success"})
    comments = bed.gitea.api("GET", f"/repos/{bed.owner_repo}/issues/{number}/comments")
    if len(comments) != 1:
        raise DemoError(f"pull request #{number} has {len(comments)} comments, not one plan")
    out.note("gitsync's comment on the pull request:")
    out.block(comments[0]["body"])
    _, text = bed.gitsync("previews", "--config", str(bed.config))
    out.block(text)
    if f"{service}-pr-{number}" not in rayservices(bed, PREVIEWS):
        raise DemoError(f"no {service}-pr-{number} in {PREVIEWS}")
    if bed.ray:
        bed.out.note(f"the preview's routes are under /pr-{number}, its own cluster answers:")
        show_answer(bed, PREVIEWS, f"{service}-pr-{number}", f"/pr-{number}/embed?text=hello")
    out.note(f"closing pull request #{number}: its preview goes away")
    bed.gitea.api("PATCH", f"/repos/{bed.owner_repo}/pulls/{number}", {"state": "closed"})
    wait(bed, lambda: not rayservices(bed, PREVIEWS), f"the preview of #{number} to be deleted")
    out.note(f"{PREVIEWS} is empty again.")


def drift_self_heal(bed: Bed) -> None:
    out = bed.out
    out.step("6/6  Someone edits a RayService by hand; drift self-heal puts Git's version back")
    live = rayservice(bed, STAGING, "ranker") or {}
    desired = live["spec"]["serveConfigV2"]
    replicas = bed.drift_replicas
    edited = desired.replace("num_replicas: 1", f"num_replicas: {replicas}", 1)
    patch = json.dumps({"spec": {"serveConfigV2": edited}})
    out.note("$ kubectl patch rayservice ranker -n ray-staging --type=merge \\")
    out.note(
        "    --field-manager=kubectl-edit -p "
        f'\'{{"spec":{{"serveConfigV2": …num_replicas: {replicas}…}}}}\''
    )
    assert bed.plane.binaries is not None
    bed.plane.kubectl(
        "patch", "rayservice", "ranker", "-n", STAGING, "--type=merge",
        "--field-manager=kubectl-edit", "-p", patch,
    )  # fmt: skip
    out.note("$ gitsync drift --env staging")
    code, text = bed.gitsync("drift", "--config", str(bed.config), "--env", "staging")
    out.block(text)
    if code != 1 or "kubectl-edit" not in text:
        # The agent's own drift check (every 15 s) can come first: it found the edit and its
        # heal is under way, so the command sees a rollout in progress or Git's version back.
        agent_log = (bed.workdir / "gitsync.log").read_text()
        if "ray-staging/ranker: spec.serveConfigV2 changed by kubectl-edit" not in agent_log:
            raise DemoError(
                f"neither gitsync drift (exit {code}) nor the agent reported the edit by"
                " kubectl-edit"
            )
        out.note("the agent's own drift check found the edit first (the agent's log says so).")
    out.note("staging has selfHeal: true; the agent's drift check (every 15 s here) heals it:")
    wait(
        bed,
        lambda: (rayservice(bed, STAGING, "ranker") or {})["spec"]["serveConfigV2"] == desired,
        "Git's serveConfigV2 back on ray-staging/ranker",
    )
    wait(bed, lambda: healed(bed, "staging"), "the heal's rollout and a clean drift check")
    code, text = bed.gitsync("drift", "--config", str(bed.config), "--env", "staging")
    if code != 0:
        raise DemoError(f"gitsync drift still reports drift after the heal:\n{text}")
    out.note("Git's version is back and Healthy; `gitsync drift --env staging` finds nothing.")


def where_to_look(bed: Bed) -> None:
    out = bed.out
    port = bed.agent_port
    show_status(bed)
    out.step("Where to look")
    kubectl = bed.plane.binaries.kubectl if bed.plane.binaries else "kubectl"
    rows = [
        ("commit statuses (Gitea)", f"{bed.gitea.url}/{bed.owner_repo}/commits/branch/main"),
        ("", f"sign in as {bed.gitea.admin}, password {bed.gitea.password}"),
        ("gitsync's status page", f"http://127.0.0.1:{port}/"),
        ("Prometheus metrics", f"http://127.0.0.1:{port}/metrics"),
        ("gitsync status", f"{_cli(bed)} status --config {bed.config}"),
        ("the agent's log", str(bed.workdir / "gitsync.log")),
        ("kubectl", f"export KUBECONFIG={bed.plane.kubeconfig}"),
        ("", f"{kubectl} get rayservices -A"),
        ("the team's clone", f"{bed.work}  (push from it: gitsync rolls it out)"),
    ]
    if bed.ray:
        for ns in (STAGING, PRODUCTION):
            for name in ("embedder", "ranker"):
                rows.append((f"{ns}/{name}-serve-svc", bed.ray.url(ns, name)))
        for head in sorted(bed.ray.hosts.heads.values(), key=lambda h: (h.namespace, h.cluster)):
            rows.append((f"Ray dashboard {head.namespace}", f"{head.dashboard}  ({head.cluster})"))
        rows.append(("Ray heads' logs", str(bed.ray.hosts.workdir)))
        rows.append(("KubeRay operator's log", str(bed.ray.operator.logdir)))
    for label, where in rows:
        out.note(f"{label:<26} {where}")


# -- what the chapters share ---------------------------------------------------------------


def edit(work: Path, env: str, service: str, old: str, new: str) -> None:
    path = work / "environments" / env / f"{service}.yaml"
    text = path.read_text()
    if old not in text:
        raise DemoError(f"{path} has no {old!r} to change")
    path.write_text(text.replace(old, new))


def commit_with_plan(bed: Bed, message: str) -> str:
    """Commits the edits, shows gitsync's offline plan of them, and pushes."""
    git("add", "-A", cwd=bed.work)
    git("commit", "-q", "-m", message, cwd=bed.work)
    bed.out.note("$ gitsync plan --from HEAD~1 --to HEAD   (what KubeRay will do, from Git alone)")
    code, text = bed.gitsync("plan", "--from", "HEAD~1", "--to", "HEAD", ".")
    bed.out.block(text)
    if code != 1:
        raise DemoError(f"gitsync plan exited {code}, not 1 (changes):\n{text}")
    git(*bed.gitea.git_auth_config(), "push", "-q", "origin", "main", cwd=bed.work)
    sha = git("rev-parse", "HEAD", cwd=bed.work)
    bed.out.note(f"pushed {sha[:12]}: Gitea's webhook tells the agent at once")
    return sha


def follow(
    bed: Bed,
    sha: str,
    expected: dict[str, str],
    also: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Prints every commit status gitsync posts on ``sha`` until each context in ``expected``
    is final; returns the final ones. A final state other than the expected one is an error."""
    shown: set[tuple[str, str, str]] = set()
    deadline = time.monotonic() + bed.pace.timeout
    while True:
        combined = bed.gitea.api("GET", f"/repos/{bed.owner_repo}/commits/{sha}/statuses")
        # Oldest first, so the transitions print in the order they were posted.
        for status in sorted(combined, key=lambda s: s["id"]):
            seen = (status["context"], status["status"], status["description"])
            if seen not in shown:
                shown.add(seen)
                bed.out.note(f"● {seen[0]:<18} {seen[1]:<8} {seen[2]}")
        latest: dict[str, dict[str, Any]] = {}
        for status in sorted(combined, key=lambda s: s["id"]):
            latest[status["context"]] = status
        if all(latest.get(c, {}).get("status") in FINAL for c in expected):
            wrong = {c: latest[c]["status"] for c in expected if latest[c]["status"] != expected[c]}
            if wrong:
                raise DemoError(
                    f"commit {sha[:12]}: expected {expected}, got "
                    + ", ".join(f"{c}: {s} ({latest[c]['description']})" for c, s in wrong.items())
                )
            return latest
        if also is not None:
            also()
        bed.check()
        if time.monotonic() > deadline:
            raise DemoError(f"commit {sha[:12]}: no final {', '.join(expected)} status in time")
        time.sleep(0.5)


def wait(bed: Bed, condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + bed.pace.timeout
    while not condition():
        bed.check()
        if time.monotonic() > deadline:
            raise DemoError(f"gave up waiting for {what}")
        time.sleep(0.5)


def show_answer(bed: Bed, namespace: str, service: str, path: str) -> None:
    """``curl`` through the serve Service's stand-in, printed; an error answer stops the story."""
    assert bed.ray is not None
    status, body = bed.ray.get(namespace, service, path)
    bed.out.note(f"$ curl {namespace}/{service}-serve-svc:8000{path}")
    bed.out.block(answer_line(status, body))
    if status != 200:
        raise DemoError(f"{namespace}/{service} answered {path} with HTTP {status}")


def wait_for_answer(bed: Bed, namespace: str, service: str, path: str, key: str, value: str) -> str:
    """The first answer whose ``key`` is ``value`` (Serve applies a user_config to a running
    replica a moment after it reports the app RUNNING)."""
    assert bed.ray is not None
    seen: list[str] = []

    def found() -> bool:
        status, body = bed.ray.get(namespace, service, path) if bed.ray else (0, "")
        seen.append(body)
        return status == 200 and answer_field(body, key) == value

    wait(bed, found, f"{namespace}/{service} to answer {key} {value} (last: {seen[-1:]})")
    return seen[-1]


def rayservices(bed: Bed, namespace: str) -> dict[str, dict[str, Any]]:
    items = client.CustomObjectsApi(bed.api).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )["items"]
    return {o["metadata"]["name"]: o for o in items}


def rayservice(bed: Bed, namespace: str, name: str) -> dict[str, Any] | None:
    return rayservices(bed, namespace).get(name)


def active_cluster(bed: Bed, namespace: str, name: str) -> str:
    status = (rayservice(bed, namespace, name) or {}).get("status") or {}
    return str((status.get("activeServiceStatus") or {}).get("rayClusterName", "?"))


def healed(bed: Bed, environment: str) -> bool:
    """The heal's rollout finished Healthy and the agent's next check found no drift."""
    store = StateStore(bed.api, STATE_NAMESPACE)
    state = store.read(environment)
    findings = store.read_drift(environment).findings
    return state is not None and state.phase == Phase.SUCCEEDED and not findings


def show_status(bed: Bed) -> None:
    bed.out.note(f"$ gitsync status --config {bed.config.name}")
    _, text = bed.gitsync("status", "--config", str(bed.config))
    bed.out.block(text)


def _cli(bed: Bed) -> str:
    return f"KUBECONFIG={bed.plane.kubeconfig} .venv/bin/gitsync"


def _time(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
