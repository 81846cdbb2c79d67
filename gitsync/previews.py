"""Pull-request previews and plan comments (the agent's preview job, ``gitsync previews``).

For every open pull request (from the forge, or branches matching ``previews.branches``):

- **plan comment** (forges only): gitsync's Ray-aware plan of merging it, for every
  environment it touches, as one comment edited in place;
- **preview**: the services of ``previews.from`` that the PR changes, transformed by
  :mod:`gitsync.manifests.preview` (renamed, capped, in the preview namespace), rolled out
  like any environment (``preview-<N>``: waves, health gates, a state ConfigMap), reported as
  ``gitsync/preview`` on the PR's head commit. Forks need the label or an allowed author;
  when ``maxPreviews`` previews exist, the others wait (oldest PR first once a place frees).

Previews whose PR is closed or merged, whose TTL passed, or whose PR no longer exists are
deleted. Nothing is ever written outside the preview namespace: every body is checked here
before it reaches the API server, whatever its manifest said.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitsync.checkout import (
    TreeReport,
    document_at,
    read_environment,
    read_repo_config,
    read_tree_cached,
)
from gitsync.config import PULL_REQUESTS, AgentConfig
from gitsync.diff.normalize import owned
from gitsync.errors import GitsyncError, InvalidRevision, TreeTooLarge, VerificationError
from gitsync.kube.namespaces import ensure_namespace
from gitsync.kube.rayservices import RayServices
from gitsync.kube.state import StateStore
from gitsync.manifests.load import EnvironmentManifests
from gitsync.manifests.podpolicy import Violation, enforce, problem_text
from gitsync.manifests.preview import PREVIEW, preview_manifest
from gitsync.manifests.repoconfig import EnvironmentConfig, PreviewConfig
from gitsync.model import (
    Action,
    DesiredService,
    Outcome,
    Phase,
    Problem,
    RolloutResult,
    RolloutState,
    ServiceKey,
)
from gitsync.names import PREVIEW_UPDATED, REVISION
from gitsync.plan import PLAN_COMMENT_MARKER, Plan, code, fenced, plan_markdown
from gitsync.planning import environment_manifests, live_environment_plan, tree_plans
from gitsync.progress import Lines
from gitsync.report.pulls import PullRequest, Pulls, approval, eligible, needs_label
from gitsync.report.reporter import Reporter
from gitsync.report.status import Describer, State
from gitsync.rollout import Rollout
from gitsync.source.git import GitSource

log = logging.getLogger(__name__)

UPDATED = PREVIEW_UPDATED
EXPIRED = "expired (previews.ttl)"


@dataclass(frozen=True)
class PreviewResult:
    number: int
    revision: str
    services: tuple[str, ...]  # preview service names
    outcome: str  # succeeded, failed, skipped, deleted, unchanged
    message: str
    namespace: str = ""  # where its services are (when it has any)


def preview_namespace_refused(agent: AgentConfig, previews: PreviewConfig | None) -> str | None:
    """Why the agent config does not let previews run in ``previews.namespace`` (None: it
    does): with ``allowedNamespaces``, the namespace must be listed under ``pullRequests``, so
    whoever can push ``gitsync.yaml`` cannot point previews at a production namespace."""
    if previews is None:
        return None
    allowed = agent.namespaces_for(PULL_REQUESTS)
    if allowed is None or previews.namespace in allowed:
        return None
    if allowed:
        return (
            f"gitsync.yaml puts previews in namespace {previews.namespace!r}, which the agent "
            f"config does not allow (allowedNamespaces.{PULL_REQUESTS}: {', '.join(allowed)}); "
            "no preview runs and none is deleted"
        )
    return (
        f"gitsync.yaml puts previews in namespace {previews.namespace!r}, but the agent "
        f"config's allowedNamespaces has no {PULL_REQUESTS} entry, so previews may run "
        "nowhere; no preview runs and none is deleted"
    )


def environment_for(number: int, config: PreviewConfig) -> EnvironmentConfig:
    """A preview's environment. A preview whose new clusters do not fit the preview
    namespace's quota or the nodes is refused before anything is applied, with the reason
    (``capacityCheck: block``, docs/capacity.md): it could never become Healthy."""
    return EnvironmentConfig(
        f"preview-{number}",
        "",
        config.namespace,
        prune=True,
        create_namespace=True,
        capacity_check="block",
    )


@dataclass
class PreviewReconciler:
    config: AgentConfig
    services: RayServices
    state: StateStore
    source: GitSource
    pulls: Pulls | None = None
    reporter: Reporter | None = None
    progress: Callable[[str], None] = lambda line: None
    clock: Callable[[], float] = time.time
    record: Callable[[ServiceKey, str, str, str], None] = lambda key, kind, reason, text: None
    # Where renders are kept (default: beside this source's trees). The agent shares its own:
    # a pull request forks from the head the poll has just rendered.
    renders: Path | None = None
    _approvals: dict[int, str] | None = field(default=None, init=False)
    # The base head's `previews:` section, read once per head: this runs at every poll, and
    # loading (or rendering) a tree of 1,000 manifests to find that nothing has a preview is
    # most of a poll.
    _base: tuple[str, PreviewConfig | None] | None = field(default=None, init=False)

    def reconcile(self) -> list[PreviewResult]:
        self._approvals = None  # read again: another replica may have led since
        head = self.source.head()
        previews = self._previews_config(head)
        requests = self._requests(previews)
        refused = preview_namespace_refused(self.config, previews)
        if refused is not None:  # allowedNamespaces: the namespace is never touched
            log.warning("previews: %s", refused)
        results: list[PreviewResult] = []
        open_numbers = {pr.number for pr in requests}
        live: set[int] = set()  # pull requests with a preview now: what maxPreviews counts
        if previews is not None and refused is None:  # first: what closed or expired frees room
            results += self._collect(previews, open_numbers)
            live = self._live(previews)
        keep = {head}
        for pr in sorted(requests, key=lambda p: p.number):
            try:
                root = self.source.checkout_ref(pr.head_ref, pr.head_sha)
                tree = read_tree_cached(root, self.renders)
                # What the PR changes is measured from where it forked: against the tip it
                # would also "revert" everything the base branch gained since.
                fork = self.source.merge_base(head, pr.head_sha, pr.head_ref)
                forked = read_tree_cached(self.source.checkout(fork), self.renders)
            except (TreeTooLarge, VerificationError) as exc:  # the PR's own doing: say so
                log.warning("pull request #%d: refused %s: %s", pr.number, pr.head_sha, exc)
                self._refused(pr, exc)
                continue
            except GitsyncError as exc:
                log.warning("pull request #%d: cannot read %s: %s", pr.number, pr.head_sha, exc)
                continue
            keep |= {pr.head_sha, fork}
            if self.pulls is not None:
                self._comment(pr, forked, fork, tree)
            if previews is None:
                continue
            if refused is not None:
                self._status(pr, State.FAILURE, refused)
                results.append(PreviewResult(pr.number, pr.head_sha, (), "failed", refused))
                continue
            try:
                result = self._preview(pr, previews, forked, (root, tree), live)
            except GitsyncError as exc:  # one bad pull request must not stop the others
                log.warning("pull request #%d: preview failed: %s", pr.number, exc)
                self._status(pr, State.FAILURE, f"preview failed: {exc}")
                result = PreviewResult(pr.number, pr.head_sha, (), "failed", str(exc))
            if self._live(previews, pr.number):
                live.add(pr.number)
            else:
                live.discard(pr.number)
            results.append(result)
        if previews is not None and refused is None:
            self._forget_closed(open_numbers)
        self._prune(keep)
        return results

    def _forget_closed(self, open_numbers: set[int]) -> None:
        """A closed pull request's approval goes with it (reopened, it needs the label again)."""
        try:
            if self._approvals is None:
                self._approvals = self.state.read_approvals()
            for number, sha in list(self._approvals.items()):
                if sha and number not in open_numbers:
                    self.state.approve(number, "")
                    del self._approvals[number]
        except GitsyncError as exc:
            log.warning("cannot forget closed pull requests' approvals: %s", exc)

    def _prune(self, keep: set[str]) -> None:
        """Keeps the trees the next reconcile reads (the base head, each open pull request's
        head and fork point); every push to a pull request would otherwise leave one behind."""
        try:
            self.source.prune(keep)
        except OSError as exc:
            log.warning("cannot prune the previews' tree cache: %s", exc)

    # -- discovery ---------------------------------------------------------------------------

    def _approved(self, pr: PullRequest, label: str) -> str | None:
        """Why a labelled fork PR's head is not approved (None: it is), recording the approval
        the first time the label is seen, and forgetting it once the label is gone."""
        if self._approvals is None:
            self._approvals = self.state.read_approvals()
        before = self._approvals.get(pr.number, "")
        approved, why = approval(label in pr.labels and bool(label), pr.head_sha, before, label)
        if approved != before:
            self.state.approve(pr.number, approved)
            self._approvals[pr.number] = approved
        return why

    def _previews_config(self, head: str) -> PreviewConfig | None:
        if self._base is None or self._base[0] != head:
            # gitsync.yaml alone: the head's manifests (and renders) are read only when a pull
            # request forks from it.
            config = read_repo_config(self.source.checkout(head))
            self._base = (head, config.previews if config else None)
        return self._base[1]

    def _requests(self, previews: PreviewConfig | None) -> list[PullRequest]:
        if self.pulls is not None:
            base_branch = self.config.repository.branch
            return [pr for pr in self.pulls.open_pulls() if pr.base_branch == base_branch]
        if previews is None or not previews.branches:
            return []
        found: dict[int, PullRequest] = {}
        for branch, sha in sorted(self.source.branches(previews.branches).items()):
            number = _branch_number(branch)
            pr = PullRequest(
                number, sha, f"refs/heads/{branch}", branch, self.config.repository.branch, "",
                False,
            )  # fmt: skip
            if number in found:  # two previews would overwrite each other: the first keeps it
                why = (
                    f"no preview: branch {branch} gets number {number}, as "
                    f"{found[number].head_branch} does; rename it"
                )
                log.warning("%s", why)
                self._status(pr, State.FAILURE, why)
                continue
            found[number] = pr
        return list(found.values())

    # -- plan comments -----------------------------------------------------------------------

    def _comment(self, pr: PullRequest, base: TreeReport, base_sha: str, tree: TreeReport) -> None:
        assert self.pulls is not None
        try:
            plans, checked = self._plans(base, base_sha, tree, pr.head_sha)
            body = plan_markdown(plans, base_sha, pr.head_sha, capacity=checked)
        except GitsyncError as exc:
            body = plan_markdown([], base_sha, pr.head_sha).replace(
                "No RayService changes: merging this deploys nothing.",
                f"The pull request's manifests are invalid; nothing would be deployed:\n\n"
                f"{fenced(str(exc))}",
            )
        try:
            self.pulls.upsert_comment(pr.number, body)
        except GitsyncError as exc:
            log.warning("pull request #%d: plan comment not written: %s", pr.number, exc)

    def _plans(
        self, base: TreeReport, base_sha: str, tree: TreeReport, head_sha: str
    ) -> tuple[list[Plan], bool]:
        """The comment's plans, with the capacity verdicts against the cluster now (and True);
        without them (and False) when the cluster cannot be read: the plan comes first."""
        options = self.config.classify
        try:
            plans = tree_plans(
                base, tree, None, options, base_sha, head_sha, capacity=self.services
            )
        except GitsyncError as exc:  # invalid manifests fail again, below
            log.warning("plan comment without capacity verdicts: %s", exc)
            return tree_plans(base, tree, None, options, base_sha, head_sha), False
        return plans, True

    def _refused(self, pr: PullRequest, exc: GitsyncError) -> None:
        """A head gitsync will not read (too large, unsigned): a ``failure`` status and the
        reason as the plan comment, for the author to act on."""
        self._status(pr, State.FAILURE, f"not read: {exc}")
        if self.pulls is None:
            return
        body = (
            f"{PLAN_COMMENT_MARKER}\n### gitsync plan: {code(pr.head_sha[:12])}\n\n"
            f"gitsync did not read this pull request's head; nothing is planned or previewed:"
            f"\n\n{fenced(str(exc))}\n"
        )
        try:
            self.pulls.upsert_comment(pr.number, body)
        except GitsyncError as error:
            log.warning("pull request #%d: plan comment not written: %s", pr.number, error)

    # -- previews ----------------------------------------------------------------------------

    def _status(self, pr: PullRequest, state: State, text: str) -> None:
        if self.reporter is not None:
            describe = Describer(pr.head_sha, self.config.status.target_url)
            status = describe.status("preview", state, text)
            self.reporter.post(pr.head_sha, status)

    def _preview(
        self,
        pr: PullRequest,
        previews: PreviewConfig,
        base: TreeReport,
        tree: tuple[Path, TreeReport],
        live: set[int],
    ) -> PreviewResult:
        why = eligible(pr, previews.allow_authors, previews.fork_label)
        if why is None and needs_label(pr, previews.allow_authors):
            why = self._approved(pr, previews.fork_label)
        elif needs_label(pr, previews.allow_authors):
            self._approved(pr, previews.fork_label)  # the label is off: forget what it approved
        if why is not None:
            self._status(pr, State.PENDING, why)
            return PreviewResult(pr.number, pr.head_sha, (), "skipped", why)
        prior = self.state.read(f"preview-{pr.number}")
        if prior is not None and prior.message == EXPIRED and prior.revision == pr.head_sha:
            why = (
                f"preview expired after {previews.ttl / 3600:.0f}h (previews.ttl); push to recreate"
            )
            self._status(pr, State.SUCCESS, why)
            return PreviewResult(pr.number, pr.head_sha, (), "skipped", why)
        if pr.number not in live and len(live) >= previews.max_previews:
            why = (
                f"no preview yet: {previews.max_previews} previews already run "
                "(previews.maxPreviews)"
            )
            self._status(pr, State.PENDING, why)
            return PreviewResult(pr.number, pr.head_sha, (), "skipped", why)
        try:
            desired = self._desired(pr, previews, base, tree)
        except InvalidRevision as exc:  # nothing of an invalid revision is ever applied
            if self.reporter is not None:
                describe = Describer(pr.head_sha, self.config.status.target_url)
                self.reporter.post(pr.head_sha, describe.invalid("preview", exc.problems))
            return PreviewResult(pr.number, pr.head_sha, (), "failed", str(exc))
        return self._roll_out(pr, previews, desired)

    def _desired(
        self,
        pr: PullRequest,
        previews: PreviewConfig,
        base: TreeReport,
        tree: tuple[Path, TreeReport],
    ) -> dict[ServiceKey, DesiredService]:
        """The PR's changed services of ``previews.from``, as preview services."""
        renders = self.renders or tree[0].parent / "renders"
        head_env = _preview_source(*tree, previews.source, pr.head_sha[:12], renders)
        try:
            base_env = environment_manifests(base, previews.source, "base")
            before = {s.key.name: owned(s.manifest) for s in base_env.services}
        except GitsyncError:
            before = {}
        desired: dict[ServiceKey, DesiredService] = {}
        refused: list[Problem] = []
        for service in head_env.services:
            if before.get(service.key.name) == owned(service.manifest):
                continue  # unchanged by this PR: no preview of it
            # The base branch's policy, never the PR's own gitsync.yaml: a PR cannot relax it.
            checked = enforce(service.manifest, previews.policy)
            if checked.refused:
                refused += _refusals(tree[0], service, checked.refused)
                continue
            refused += _over_limits(service, previews, len(desired))
            for violation in checked.stripped:
                self.progress(f"preview #{pr.number}: {service.key.name}: stripped {violation}")
            body = preview_manifest(checked.manifest, pr.number, previews)
            # Ignored when comparing (normalize), so only a real change moves it: the TTL.
            body["metadata"]["annotations"][UPDATED] = str(int(self.clock()))
            key = ServiceKey(previews.namespace, body["metadata"]["name"])
            desired[key] = DesiredService(
                key, f"preview-{pr.number}", body, service.source, service.line, service.wave
            )
        if refused:  # nothing of this pull request is deployed, as for invalid manifests
            raise InvalidRevision(f"pull request #{pr.number} (previews.policy)", tuple(refused))
        return desired

    def _roll_out(
        self, pr: PullRequest, previews: PreviewConfig, desired: dict[ServiceKey, DesiredService]
    ) -> PreviewResult:
        env = environment_for(pr.number, previews)
        names = tuple(sorted(k.name for k in desired))
        for key, service in desired.items():  # defence in depth, whatever the manifest said
            if (
                key.namespace != previews.namespace
                or service.manifest["metadata"].get("namespace") != previews.namespace
            ):
                raise GitsyncError(f"preview body for {key} left the preview namespace")
        if desired and ensure_namespace(self.services.api, previews.namespace):
            self.progress(f"previews: created namespace {previews.namespace}")
        # Planned as every environment is (gitsync.planning): a service whose live object
        # disables reconciling it is skipped, an unchanged one costs no dry run.
        loaded = EnvironmentManifests(env, tuple(desired.values()), (), (), len(desired))
        plan = live_environment_plan(
            loaded, self.services, self.config.classify, pr.head_sha,
            concurrency=self.config.rollout.concurrency,
        )  # fmt: skip
        if not desired:
            text = "no preview: this pull request changes no service of " + previews.source
            self._status(pr, State.SUCCESS, text)
        actions = ", ".join(f"{c.key.name} {c.action}" for c in plan.changes
                            if c.action is not Action.UNCHANGED)  # fmt: skip
        if actions:
            self._status(pr, State.PENDING, f"deploying preview: {actions}")
        watching = Lines(self.progress, self.record)
        rollout = Rollout(self.services, self.state, self.config.rollout, observer=watching)
        result = rollout.run(env, plan, desired, pr.head_sha)
        return self._finish(pr, previews, names, result)

    def _finish(
        self, pr: PullRequest, previews: PreviewConfig, names: Sequence[str], result: RolloutResult
    ) -> PreviewResult:
        if result.outcome is Outcome.SUCCEEDED:
            if names:
                where = f"{', '.join(names)} in {previews.namespace}"
                self._status(pr, State.SUCCESS, f"preview Healthy: {where}")
            outcome = "succeeded" if result.applied or result.pruned else "unchanged"
            return PreviewResult(
                pr.number, pr.head_sha, tuple(names), outcome, result.message, previews.namespace
            )
        self._status(pr, State.FAILURE, f"preview failed: {result.message}")
        return PreviewResult(
            pr.number, pr.head_sha, tuple(names), "failed", result.message, previews.namespace
        )

    def _live(self, previews: PreviewConfig, number: int | None = None) -> set[int]:
        """The pull requests (or just ``number``) with preview objects in the namespace."""
        selector = f"{PREVIEW}={number}" if number is not None else PREVIEW
        return {
            int(label)
            for obj in self.services.list_labelled(previews.namespace, selector)
            if (label := (obj["metadata"].get("labels") or {}).get(PREVIEW, "")).isdigit()
        }

    # -- garbage collection ------------------------------------------------------------------

    def _collect(self, previews: PreviewConfig, open_numbers: set[int]) -> list[PreviewResult]:
        """Deletes previews of closed, merged or vanished PRs, and those past their TTL."""
        live = self.services.list_labelled(previews.namespace, PREVIEW)
        by_number: dict[int, list[dict[str, Any]]] = {}
        for obj in live:
            label = (obj["metadata"].get("labels") or {}).get(PREVIEW, "")
            if label.isdigit():
                by_number.setdefault(int(label), []).append(obj)
        results = []
        now = self.clock()
        for number, objects in sorted(by_number.items()):
            updated = max(
                int((o["metadata"].get("annotations") or {}).get(UPDATED, "0") or 0)
                for o in objects
            )
            if number in open_numbers and now - updated < previews.ttl:
                continue
            why = (
                "its pull request is closed"
                if number not in open_numbers
                else (f"not updated for {previews.ttl / 3600:.0f}h (previews.ttl)")
            )
            for obj in objects:
                key = ServiceKey(previews.namespace, obj["metadata"]["name"])
                self.services.delete(key)
                self.progress(f"preview #{number}: deleted {key}: {why}")
            if number in open_numbers:  # expired: not recreated until the PR gets a new commit
                revision = (objects[0]["metadata"].get("annotations") or {}).get(REVISION, "")
                self.state.write(
                    RolloutState(
                        f"preview-{number}",
                        revision,
                        Phase.SUCCEEDED,
                        None,
                        "",
                        "",
                        EXPIRED,
                        "",
                        previews.namespace,
                    )
                )
            else:
                self.state.delete(f"preview-{number}")
            results.append(PreviewResult(number, "", tuple(o["metadata"]["name"] for o in objects),
                                         "deleted", why))  # fmt: skip
        return results


def _preview_source(
    root: Path, tree: TreeReport, name: str, label: str, renders: Path
) -> EnvironmentManifests:
    """The environment previews copy from, at a PR's head. A manifest naming a namespace
    (``production``) is invalid for the environment itself, but not for its preview: the
    preview transform decides the namespace, whatever the manifest says. Everything else is
    validated as usual."""
    try:
        return environment_manifests(tree, name, label)
    except InvalidRevision:
        if tree.config is None:
            raise
        env = tree.config.environment(name)
        loaded = read_environment(root, tree.config, env, any_namespace=True, render_cache=renders)
        if not loaded.ok:
            raise InvalidRevision(f"environment {name!r} at {label}", loaded.problems) from None
        return loaded


def _over_limits(service: DesiredService, previews: PreviewConfig, before: int) -> list[Problem]:
    """What makes a preview too large to be capped into shape: too many worker groups in one
    service, or more changed services than one pull request may preview."""
    problems = []
    cluster = (service.manifest.get("spec") or {}).get("rayClusterConfig") or {}
    groups = cluster.get("workerGroupSpecs") if isinstance(cluster, dict) else None
    if isinstance(groups, list) and len(groups) > previews.max_worker_groups:
        why = (
            f"{service.key.name} has {len(groups)} worker groups; a preview may have at most "
            f"{previews.max_worker_groups} (previews.overrides.maxWorkerGroups)"
        )
        problems.append(Problem(service.source, service.line, why))
    if before == previews.max_services:  # once, at the first service over the limit
        why = (
            f"this pull request changes more than {previews.max_services} services of "
            f"{previews.source}, the most one preview may run (previews.overrides.maxServices)"
        )
        problems.append(Problem(service.source, service.line, why))
    return problems


def _refusals(root: Path, service: DesiredService, refused: Sequence[Violation]) -> list[Problem]:
    """Each refusal at the line of the field it names: in the overlay's patch that set it (a
    rendered service), else in the service's file (parsed again: only a refused service pays
    for it)."""
    doc = document_at(root, service.source, service.line)
    problems = []
    for violation in refused:
        text = problem_text(violation, "previews.policy")
        path = violation.path
        site = next(
            (service.patched[path[:end]] for end in range(len(path), 0, -1)
             if path[:end] in service.patched),
            None,
        )  # fmt: skip
        if site is not None:
            problems.append(Problem(site[0], site[1], text))
        elif doc is None:
            problems.append(Problem(service.source, service.line, text))
        else:
            problems.append(doc.problem(text, *path))
    return problems


def _branch_number(branch: str) -> int:
    """A stable number for a forge-less preview branch (names must be DNS-safe and short):
    ``preview/42`` is 42; any other name hashes, whole, to six digits (``reconcile`` gives a
    colliding second branch no preview rather than letting it overwrite the first)."""
    tail = branch.rsplit("/", 1)[-1]
    if tail.isdigit():
        return int(tail)
    digest = int.from_bytes(hashlib.sha256(branch.encode()).digest()[:8], "big")
    return 100000 + digest % 900000


def list_previews(services: RayServices, namespace: str) -> list[dict[str, Any]]:
    """Active previews for ``gitsync previews``: PR, service, revision, health inputs, age."""
    rows = []
    for obj in services.list_labelled(namespace, PREVIEW):
        meta = obj["metadata"]
        annotations = meta.get("annotations") or {}
        rows.append(
            {
                "pr": int((meta.get("labels") or {}).get(PREVIEW, "0")),
                "name": meta["name"],
                "revision": annotations.get(REVISION, ""),
                "updated": int(annotations.get(UPDATED, "0") or 0),
                "object": obj,
            }
        )
    return sorted(rows, key=lambda r: (r["pr"], r["name"]))


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"
