"""What a commit status says: pure functions from rollout events to :class:`CommitStatus`.

Owns the vocabulary (docs/architecture.md, 'Outside the cluster') — context
``gitsync/<environment>``, the states, the description (≤ 140 characters, naming the first
failing service or app and why) and the ``target_url`` template. Knows nothing about forges,
HTTP or git; the providers translate these values into each forge's API.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Sequence
from dataclasses import dataclass

from gitsync.model import Action, Problem, ServiceKey

MAX_DESCRIPTION = 140  # GitHub rejects longer descriptions; Gitea and GitLab truncate
CONTEXT_PREFIX = "gitsync/"
LATER_WAVES = "; later waves were not applied"  # the rollout's suffix: no room for it
TARGET_URL_FIELDS = ("environment", "revision", "short", "context")


class State(enum.StrEnum):
    """gitsync's states. Providers map them to the forge's names (GitLab says ``running``,
    ``failed`` and ``canceled``)."""

    PENDING = "pending"
    SUCCESS = "success"
    FAILURE = "failure"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class CommitStatus:
    context: str
    state: State
    description: str
    target_url: str = ""

    def __post_init__(self) -> None:
        if len(self.description) > MAX_DESCRIPTION:
            raise ValueError(f"description longer than {MAX_DESCRIPTION}: {self.description!r}")

    @property
    def environment(self) -> str:
        return self.context.removeprefix(CONTEXT_PREFIX)


def context(environment: str) -> str:
    return f"{CONTEXT_PREFIX}{environment}"


def shorten(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """One line, at most ``limit`` characters, cut with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def target_url_problem(template: str) -> str | None:
    """Why a ``targetUrl`` template is unusable, or None."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"targetUrl {template!r} is not a valid template: {exc}"
    unknown = sorted({f for f in fields if f not in TARGET_URL_FIELDS})
    if unknown:
        return f"targetUrl {template!r} uses {{{unknown[0]}}}; the fields are " + ", ".join(
            f"{{{f}}}" for f in TARGET_URL_FIELDS
        )
    return None


@dataclass(frozen=True, slots=True)
class Describer:
    """Builds the statuses of one revision; ``target_url`` is the configured template."""

    revision: str
    target_url: str = ""

    def status(self, environment: str, state: State, text: str) -> CommitStatus:
        """Any status of ``gitsync/<environment>`` on this revision, shortened to fit."""
        return self._status(environment, state, text)

    def _status(self, environment: str, state: State, text: str) -> CommitStatus:
        ctx = context(environment)
        url = (
            self.target_url.format(
                environment=environment,
                revision=self.revision,
                short=self.revision[:12],
                context=ctx,
            )
            if self.target_url
            else ""
        )
        return CommitStatus(ctx, state, shorten(text), url)

    def applying(
        self, environment: str, index: int, total: int, actions: Sequence[tuple[ServiceKey, Action]]
    ) -> CommitStatus:
        listed = ", ".join(f"{key.label} {action}" for key, action in actions)
        return self._status(
            environment, State.PENDING, f"applying wave {index}/{total}: {listed or 'no changes'}"
        )

    def waiting(
        self,
        environment: str,
        index: int,
        total: int,
        keys: Sequence[ServiceKey],
        detail: str = "",
    ) -> CommitStatus:
        """``detail``: why the wave is not Healthy yet, when known (its pods are Pending);
        it replaces the names, which it starts with, to fit the forge's 140 characters."""
        if detail:
            return self._status(environment, State.PENDING, f"wave {index}/{total} waits: {detail}")
        names = ", ".join(k.label for k in keys)
        said = f"waiting for wave {index}/{total} to be Healthy: {names}"
        return self._status(environment, State.PENDING, said)

    def healthy(self, environment: str, services: int, skipped: int = 0) -> CommitStatus:
        """``skipped``: services left alone because their reconcile is disabled (not counted
        in ``services``): success all the same, but said."""
        left = (
            f"; {skipped} service{'s' if skipped > 1 else ''} skipped: reconcile disabled"
            if skipped
            else ""
        )
        return self._status(
            environment,
            State.SUCCESS,
            f"Healthy at {self.revision[:12]}: {services} service(s), every app RUNNING{left}",
        )

    def failed(self, environment: str, key: ServiceKey | None, reason: str) -> CommitStatus:
        """``reason`` is the rollout's message, which starts with the service's key; the
        description names the service by its name to leave room for KubeRay's reason."""
        text = reason.replace(LATER_WAVES, "")
        if key is not None:
            text = (
                text.replace(f"{key} is ", f"{key.label} ", 1)
                if text.startswith(f"{key} is ")
                else text.replace(str(key), key.label, 1)
            )
        return self._status(environment, State.FAILURE, text)

    def invalid(self, environment: str, problems: Sequence[Problem | object]) -> CommitStatus:
        first = problems[0] if problems else "invalid manifests"
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return self._status(environment, State.FAILURE, f"invalid: {first}{more}")

    def blocked(self, environment: str, why: str) -> CommitStatus:
        return self._status(environment, State.FAILURE, f"not rolled out: {why}")

    def waiting_for(self, environment: str, predecessor: str, seen: str) -> CommitStatus:
        return self._status(
            environment,
            State.PENDING,
            f"waiting for {context(predecessor)}: success at {self.revision[:12]} ({seen})",
        )

    def suspended(self, environment: str, hold: str) -> CommitStatus:
        """``hold``: who suspended it and why (``Hold.describe``)."""
        return self._status(
            environment,
            State.PENDING,
            f"not rolled out: {environment} is {hold}; rolls out after gitsync resume",
        )

    def pinned(self, environment: str, hold: str) -> CommitStatus:
        """On a head commit the pin holds back: pending until ``gitsync unpin``."""
        return self._status(
            environment,
            State.PENDING,
            f"not rolled out: {environment} is {hold}; rolls out after gitsync unpin",
        )

    def outside_window(self, environment: str, opens: str, why: str) -> CommitStatus:
        """Outside the environment's change windows: when it rolls out first, then why."""
        return self._status(
            environment, State.PENDING, f"waiting for its change window: rolls out {opens} ({why})"
        )

    def held_after(self, environment: str, held: str, hold: str) -> CommitStatus:
        """An environment after a held one (``after:``) waits with it."""
        return self._status(
            environment, State.PENDING, f"not rolled out: waiting for {held}, which is {hold}"
        )

    def superseded(self, environment: str, newer: str) -> CommitStatus:
        by = f" by {newer[:12]}" if newer else ""
        return self._status(environment, State.ERROR, f"superseded{by} before it was Healthy")

    def error(self, environment: str, message: str) -> CommitStatus:
        return self._status(environment, State.ERROR, f"gitsync error: {message}")
