"""Plan: changes → ordered waves for one environment, as a frozen, printable value. Pure.

Waves run in ascending ``gitsync.ray.io/wave`` order; prunes come last, in a wave of their own.
A wave holds RayServices and the other kinds the repository allows (``allowedKinds``),
the other kinds first.
Under ``prune: false`` a service Git no longer declares is an ``orphan`` there instead: the
plan says what the rollout will do (leave it running), never "will be deleted".
A service whose live object says ``gitsync.ray.io/reconcile: disabled`` keeps its place as a
``skipped`` change (what Git's version would do, for the reader): nothing applies, prunes or
gates it, so it never holds up a later wave.
``gitsync plan`` prints a plan and ``gitsync sync`` executes the same value: there is no
second code path that almost plans.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gitsync.capacity import Fit, Pod, Verdict
from gitsync.diff.classify import DEFAULT_OPTIONS, Options, classify_any
from gitsync.model import Action, Change, FieldChange, ServiceKey
from gitsync.names import RECONCILE

_NO_WORK = frozenset({Action.UNCHANGED, Action.SKIPPED, Action.ORPHAN})
ORPHAN_SUMMARY = (
    "no longer in Git; left running because prune is off "
    "(set prune: true on the environment in gitsync.yaml to delete it)"
)


@dataclass(frozen=True)
class Wave:
    number: int
    changes: tuple[Change, ...]
    prune: bool = False


@dataclass(frozen=True)
class Plan:
    environment: str
    namespace: str
    from_rev: str | None
    to_rev: str | None
    waves: tuple[Wave, ...]
    # Whether each new RayCluster (a create or cluster-swap) and each in-place growth fits
    # (docs/capacity.md), and what the environment's capacityCheck does about one that does
    # not: warn, block, off; and the pods each adds, for a re-check before a later wave.
    capacity: Mapping[ServiceKey, Verdict] = field(default_factory=dict)
    capacity_check: str = "warn"
    demands: Mapping[ServiceKey, tuple[Pod, ...]] = field(default_factory=dict)

    @property
    def changes(self) -> tuple[Change, ...]:
        return tuple(c for w in self.waves for c in w.changes)

    @property
    def has_changes(self) -> bool:
        """Whether applying the plan changes anything (an orphan is left as it is)."""
        return any(c.action not in _NO_WORK for c in self.changes)

    @property
    def orphans(self) -> tuple[ServiceKey, ...]:
        return tuple(c.key for c in self.changes if c.action is Action.ORPHAN)

    @property
    def skipped(self) -> tuple[ServiceKey, ...]:
        return tuple(c.key for c in self.changes if c.action is Action.SKIPPED)

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(f"{c.key}: {w}" for c in self.changes for w in c.warnings)

    def misfits(self, keys: Sequence[ServiceKey]) -> tuple[str, ...]:
        """For each of ``keys`` whose new pods do not fit: ``<key>: does not fit: …``."""
        verdicts = [(key, self.capacity.get(key)) for key in keys]
        return tuple(
            f"{key}: {v.summary}"
            for key, v in verdicts
            if v is not None and v.fit is Fit.DOES_NOT_FIT
        )

    def capacity_refusal(self, keys: Sequence[ServiceKey]) -> str | None:
        """Why a wave applying ``keys`` must not start (``capacityCheck: block`` and a new
        cluster or in-place growth that does not fit), else None."""
        misfits = self.misfits(keys)
        if self.capacity_check != "block" or not misfits:
            return None
        return "capacityCheck is block and the pods this wave starts do not fit: " + "; ".join(
            misfits
        )


def build_plan(
    environment: str,
    namespace: str,
    current: Mapping[ServiceKey, Mapping[str, Any]],
    desired: Mapping[ServiceKey, Mapping[str, Any]],
    options: Options = DEFAULT_OPTIONS,
    *,
    prune: bool,
    from_rev: str | None = None,
    to_rev: str | None = None,
    disabled: frozenset[ServiceKey] = frozenset(),
) -> Plan:
    """Pairs objects by key (no current → create, no desired → prune, or orphan when the
    environment does not ``prune``) and orders them.

    Both mappings hold normalised objects (:func:`gitsync.diff.normalize.owned`); ``current``
    must only hold what gitsync manages in this environment, or it would prune strangers.
    ``disabled``: the services whose reconcile is disabled, planned as :func:`skipped`.
    """
    changes = [
        classify_any(current.get(key), desired.get(key), options)
        for key in sorted({*current, *desired})
    ]
    if not prune:
        changes = [orphaned(c) if c.action is Action.PRUNE else c for c in changes]
    changes = [skipped(c) if c.key in disabled else c for c in changes]
    by_wave: dict[int, list[Change]] = {}
    prunes: list[Change] = []
    for change in changes:
        if change.action in (Action.PRUNE, Action.ORPHAN) or (
            change.action is Action.SKIPPED and change.key not in desired
        ):
            prunes.append(change)
        else:
            by_wave.setdefault(change.wave, []).append(change)
    waves = [Wave(n, _kind_order(by_wave[n])) for n in sorted(by_wave)]
    # A skipped prune stays with the prunes: it is one, left undone; so do orphans, which
    # are what a prune would have touched.
    if prunes:
        last = max(by_wave, default=0) + 1
        waves.append(Wave(last, tuple(prunes), prune=True))
    return Plan(environment, namespace, from_rev, to_rev, tuple(waves))


def unchanged_plan(
    environment: str,
    namespace: str,
    waves: Mapping[ServiceKey, int],
    *,
    to_rev: str | None = None,
    disabled: frozenset[ServiceKey] = frozenset(),
) -> Plan:
    """The plan of an environment known to be exactly as Git wants it (each key with its
    wave): what :func:`build_plan` returns for equal objects, without comparing them."""
    by_wave: dict[int, list[Change]] = {}
    for key in sorted(waves):
        change = Change(key, Action.UNCHANGED, waves[key], "unchanged")
        by_wave.setdefault(waves[key], []).append(skipped(change) if key in disabled else change)
    waves_ = tuple(Wave(n, _kind_order(by_wave[n])) for n in sorted(by_wave))
    return Plan(environment, namespace, None, to_rev, waves_)


def _kind_order(changes: Sequence[Change]) -> tuple[Change, ...]:
    """Within a wave the other kinds come first, as Argo CD orders kinds: a ConfigMap or
    Service a RayService uses exists before the RayService (the rollout applies them first)."""
    return tuple(sorted(changes, key=lambda c: (c.key.is_rayservice, c.key)))


def skipped(change: Change) -> Change:
    """``change`` left undone because the live object disables reconciling it: the summary
    keeps what Git's version would do, so the plan still shows the difference."""
    why = f"reconcile disabled ({RECONCILE}: disabled on the live object)"
    would = (
        "no difference from Git"
        if change.action is Action.UNCHANGED
        else f"Git's version would be {change.action}: {change.summary}"
    )
    return Change(
        change.key,
        Action.SKIPPED,
        change.wave,
        f"{why}; {would}",
        change.details,
        change.warnings,
        change.fields,
    )


def orphaned(change: Change) -> Change:
    """A prune the environment does not do (``prune: false``): the rollout leaves it."""
    return Change(change.key, Action.ORPHAN, change.wave, ORPHAN_SUMMARY)


def group_of(wave: Wave) -> str:
    """The name of the last group, of services Git no longer declares: ``prune`` (deleted),
    or ``orphans`` when the environment does not prune (left running)."""
    return "orphans" if any(c.action is Action.ORPHAN for c in wave.changes) else "prune"


def fields_json(field: FieldChange) -> dict[str, Any]:
    """One changed field, ``{path, old, new}`` (null: absent on that side)."""
    return {"path": field.path, "old": field.old, "new": field.new}


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "environment": plan.environment,
        "namespace": plan.namespace,
        "from": plan.from_rev,
        "to": plan.to_rev,
        "waves": [
            {
                "wave": wave.number,
                **({group_of(wave): True} if wave.prune else {}),
                "changes": [
                    {
                        "namespace": c.key.namespace,
                        "name": c.key.name,
                        "kind": c.key.kind,
                        "apiVersion": c.key.api_version,
                        "action": str(c.action),
                        "summary": c.summary,
                        "details": list(c.details),
                        "fields": [fields_json(f) for f in c.fields],
                        "warnings": list(c.warnings),
                        "capacity": (
                            plan.capacity[c.key].json() if c.key in plan.capacity else None
                        ),
                    }
                    for c in wave.changes
                ],
            }
            for wave in plan.waves
        ],
        "warnings": list(plan.warnings),
        "capacityCheck": plan.capacity_check,
    }


def plan_table(plan: Plan, *, show_unchanged: bool = False) -> str:
    """A plain-text table: wave, service, action, summary, then indented details."""
    revisions = f": {(plan.from_rev or 'nothing')[:12]} → {plan.to_rev[:12]}" if plan.to_rev else ""
    lines = [f"environment {plan.environment} (namespace {plan.namespace}){revisions}"]
    unchanged = 0
    for wave in plan.waves:
        shown = [c for c in wave.changes if show_unchanged or c.action is not Action.UNCHANGED]
        unchanged += len(wave.changes) - len(shown)
        if not shown:
            continue
        lines.append(f"  {group_of(wave) if wave.prune else f'wave {wave.number}'}:")
        width = max(len(c.key.label) for c in shown)
        for c in shown:
            lines.append(f"    {c.key.label:<{width}}  {c.action:<17} {c.summary}")
            lines += [f"      - {d}" for d in c.details]
            lines += [f"      ! {w}" for w in c.warnings]
            if (verdict := plan.capacity.get(c.key)) is not None:
                mark = "-" if verdict.fit is Fit.FITS else "!"
                lines.append(f"      {mark} capacity: {verdict.summary}{_blocks(plan, verdict)}")
    if not plan.has_changes:
        orphans = len(plan.orphans)
        left = f"; {orphans} left running (prune is off)" if orphans else ""
        lines.append(f"  no changes{' to apply' if orphans else ''}{left}")
    if unchanged:
        lines.append(f"  ({unchanged} unchanged)")
    return "\n".join(lines) + "\n"


def _blocks(plan: Plan, verdict: Verdict) -> str:
    if verdict.fit is Fit.DOES_NOT_FIT and plan.capacity_check == "block":
        return " (capacityCheck: block, the rollout stops before this wave)"
    return ""


_SIGNS = {Action.CREATE: "+", Action.PRUNE: "-", Action.SKIPPED: "=", Action.ORPHAN: "?"}
_COLORS = {
    "+": "32",
    "-": "31",
    "~": "33",
    "=": "36",
    "?": "36",
    "!": "35",
    "old": "31",
    "new": "32",
    "bold": "1",
}


def plan_diff(plan: Plan, *, color: bool = False) -> str:
    """A readable semantic diff: one line per changed service, its apps, deployments and
    fields beneath (old → new), warnings marked ``!``. ANSI colours when ``color``."""

    def paint(text: str, what: str) -> str:
        return f"\033[{_COLORS[what]}m{text}\033[0m" if color else text

    lines = []
    for change in plan.changes:
        if change.action is Action.UNCHANGED:
            continue
        sign = _SIGNS.get(change.action, "~")
        lines.append(
            paint(f"{sign} {change.key}", sign)
            + f" (wave {change.wave}): "
            + paint(str(change.action), "bold")
            + f": {change.summary}"
        )
        for detail in change.details:
            where, arrow, new = detail.rpartition(" → ")
            field, colon, old = where.rpartition(": ")
            shown = (
                f"{field}: {paint(old, 'old')} → {paint(new, 'new')}" if arrow and colon else detail
            )
            lines.append(f"    {shown}")
        lines += [paint(f"    ! {w}", "!") for w in change.warnings]
    return "\n".join(lines) + ("\n" if lines else "")


PLAN_COMMENT_MARKER = "<!-- gitsync:plan -->"
SWAP_COST = "needs about twice the cluster's resources while both clusters run"


def plan_markdown(plans: Sequence[Plan], base: str, head: str, *, capacity: bool = False) -> str:
    """A pull request comment: what merging does, per environment and service, Ray-aware;
    ``capacity``: the plans hold the verdicts against the cluster (``plan --capacity``).

    Everything that comes from the repository (names, values, warnings quoting them) is
    shown as an inline code span on one line (:func:`code`): a ``user_config`` value holding
    ``\\n\\n**No RayService changes** <!--`` must not end the list, open an HTML comment and
    hide the changes after it, nor mention people or draw links."""
    lines = [
        PLAN_COMMENT_MARKER,
        f"### gitsync plan: {code(base[:12])} → {code(head[:12])}",
        "",
    ]
    changed = [c for p in plans for c in p.changes if c.action is not Action.UNCHANGED]
    if not changed:
        lines.append("No RayService changes: merging this deploys nothing.")
    for plan in plans:
        for change in plan.changes:
            if change.action is Action.UNCHANGED:
                continue
            what = "; ".join(code(d) for d in change.details[:3]) or code(change.summary)
            cost = f"; {SWAP_COST}" if change.action is Action.CLUSTER_SWAP else ""
            name = code(f"{plan.environment}/{change.key.label}")
            lines.append(f"- **{name}**: {code(str(change.action))} ({what}{cost})")
            lines += [f"  - ⚠ {code(w)}" for w in change.warnings]
            if (verdict := plan.capacity.get(change.key)) is not None:
                mark = "✓" if verdict.fit is Fit.FITS else "⚠"
                text = f"capacity: {verdict.summary}{_blocks(plan, verdict)}"
                lines.append(f"  - {mark} {code(text)}")
    flag = " --capacity" if capacity else ""
    command = f"gitsync plan --from {base[:12]} --to {head[:12]}{flag} -o markdown"
    lines += ["", f"<sub>Updated for {code(head[:12])}. {code(command)} prints the same.</sub>"]
    return "\n".join(lines) + "\n"


def one_line(text: str) -> str:
    """``text`` with every line break, control and format character (bidi overrides,
    zero-width spaces) written out as an escape: what a reader sees is what the value holds."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            point = ord(char)
            out.append(f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}")
        else:
            out.append(char)
    return "".join(out)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def code(text: str) -> str:
    """``text`` as a Markdown inline code span, inside which nothing (emphasis, HTML,
    links, mentions) is interpreted: on one line (:func:`one_line`), fenced by one backtick
    more than its longest run of backticks, padded by a space (which CommonMark strips) when
    it starts or ends with a backtick or a space."""
    text = one_line(text) or " "  # `` is no code span; an all-space one is kept as it is
    fence = "`" * (_longest_backticks(text) + 1)
    edge = text[:1] in ("`", " ") or text[-1:] in ("`", " ")
    pad = " " if edge and text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def fenced(text: str) -> str:
    """``text`` as a fenced code block whose fence is longer than any run of backticks in it
    (a line of three backticks inside must not close the block and let the rest render);
    line breaks stay, other control and format characters are escaped (:func:`one_line`)."""
    text = "\n".join(one_line(line) for line in text.split("\n"))
    fence = "`" * max(3, _longest_backticks(text) + 1)
    return f"{fence}\n{text}\n{fence}"


def _longest_backticks(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)
