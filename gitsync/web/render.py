"""The status page's HTML: view model → one document per page. Pure.

Every value is passed through :func:`html.escape` (names, commit messages and KubeRay's
messages come from Git and from the cluster); class names are chosen from fixed sets, links
only to this site or to the configured forge. No inline script or style: the page loads
``/ui/app.css`` and ``/ui/app.js`` from the same origin, so a strict Content-Security-Policy
holds. ``app.js`` re-fetches the page while a rollout runs and swaps ``<main>``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from gitsync.model import Health
from gitsync.web.view import (
    AppView,
    ChangeView,
    CommitView,
    EnvironmentSummary,
    EnvironmentView,
    EventView,
    Overview,
    PastRolloutView,
    RolloutView,
    ServiceView,
    StepView,
)

_HEALTHS = {str(h) for h in Health}


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def quote(text: str) -> str:
    """Percent-encodes everything but unreserved characters (RFC 3986), for a path segment."""
    return "".join(
        chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "-._~") else f"%{b:02X}"
        for b in text.encode()
    )


def env_path(name: str, suffix: str = "") -> str:
    return f"/environments/{quote(name)}{suffix}"


def api_path(page: str) -> str:
    return "/api/v1" + ("/environments" if page == "/" else page)


def _badge(health: str) -> str:
    kind = health if health in _HEALTHS else "Unknown"
    return f'<span class="badge health-{kind}">{e(health)}</span>'


def _state(text: str, in_progress: bool, failed: bool) -> str:
    kind = "progress" if in_progress else "failed" if failed else "idle"
    return f'<span class="state state-{kind}">{e(text)}</span>'


def _link(url: str | None, text: str) -> str:
    if url and url.startswith(("https://", "http://")):
        return f'<a href="{e(url)}" rel="noreferrer">{e(text)}</a>'
    return e(text)


def _commit(commit: CommitView | None) -> str:
    if commit is None:
        return '<span class="muted">nothing applied yet</span>'
    age = f" · {e(commit.age)} ago" if commit.age else ""
    author = f' <span class="muted">{e(commit.author)}{age}</span>' if commit.author else ""
    message = f' <span class="message">{e(commit.message)}</span>' if commit.message else ""
    return f'<code class="sha">{_link(commit.url, commit.short)}</code>{message}{author}'


def page(title: str, path: str, body: str, in_progress: bool) -> str:
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · gitsync</title>"
        '<link rel="icon" href="/ui/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/ui/app.css">'
        '<script src="/ui/app.js" defer></script></head>'
        f'<body data-api="{e(api_path(path))}" data-page="{e(path)}"'
        f' data-in-progress="{"true" if in_progress else "false"}">'
        '<header><a class="brand" href="/">gitsync</a><span class="muted">read-only status'
        '</span><span id="updated" class="muted"></span></header>'
        f'<main id="main" data-in-progress="{"true" if in_progress else "false"}">'
        f"{body}</main></body></html>\n"
    )


def _table(head: Iterable[str], rows: Iterable[str], cls: str = "") -> str:
    header = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join(rows)
    return f'<table class="{e(cls)}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _rolling_out(env: EnvironmentSummary) -> str:
    if env.rolling_out is None:
        return ""
    return f'<div class="rolling-out">rolling out {_commit(env.rolling_out)}</div>'


def _hold(env: EnvironmentSummary) -> str:
    """Suspended or pinned (gitsync suspend, pin): said under the rollout state."""
    return f'<div class="hold">{e(env.hold)}</div>' if env.hold else ""


def _summary_row(env: EnvironmentSummary) -> str:
    health = "Healthy" if env.healthy else "Degraded" if env.failed else "Progressing"
    return (
        f'<tr class="environment" data-environment="{e(env.name)}">'
        f'<td><a href="{e(env_path(env.name))}">{e(env.name)}</a>'
        f'<div class="muted">{e(env.namespace)}</div></td>'
        f"<td>{_commit(env.applied)}</td>"
        f'<td><a href="{e(env_path(env.name, "/rollout"))}">'
        f"{_state(env.state, env.in_progress, env.failed)}</a>{_rolling_out(env)}{_hold(env)}</td>"
        f'<td class="drift">{e(env.drift)}</td>'
        f"<td>{_badge(health) if env.health != 'no services' else ''} "
        f'<span class="health-summary">{e(env.health)}</span></td></tr>'
    )


def overview_page(view: Overview) -> str:
    rows = [_summary_row(env) for env in view.environments]
    body = "<h1>Environments</h1>"
    body += (
        _table(["environment", "revision applied", "rollout", "drift", "health"], rows, "overview")
        if rows
        else '<p class="muted">No environment rolled out yet: the first pass has not run.</p>'
    )
    body += "<h2>Previews</h2>"
    if view.previews:
        preview_rows = [
            f'<tr class="preview"><td>{_link(p.url, f"#{p.number}")}</td>'
            f"<td><code>{e(p.revision)}</code></td><td>{e(', '.join(p.services))}</td>"
            f"<td>{e(p.outcome)}</td><td>{e(p.message)}</td></tr>"
            for p in view.previews
        ]
        body += _table(["pull request", "revision", "services", "outcome", "message"], preview_rows)
    else:
        body += '<p class="muted">No previews.</p>'
    return page("environments", "/", body, view.in_progress)


def _app(app: AppView, where: str) -> str:
    deployments = "".join(
        f'<li class="deployment"><span class="name">{e(d.name)}</span> '
        f'<span class="serve serve-{e(d.status)}">{e(d.status)}</span>'
        + (f' <span class="kuberay-message">{e(d.message)}</span>' if d.message else "")
        + "</li>"
        for d in app.deployments
    )
    message = f' <span class="kuberay-message">{e(app.message)}</span>' if app.message else ""
    return (
        f'<li class="app {e(where)}" data-app="{e(app.name)}"><span class="name">{e(app.name)}'
        f'</span> <span class="serve serve-{e(app.status)}">{e(app.status)}</span>{message}'
        + (f"<ul>{deployments}</ul>" if deployments else "")
        + "</li>"
    )


def _service_row(service: ServiceView) -> str:
    clusters = (
        f'<div>active <code class="active-cluster">{e(service.active_cluster or "—")}</code></div>'
    )
    if service.pending_cluster:
        clusters += (
            f'<div>pending <code class="pending-cluster">{e(service.pending_cluster)}</code></div>'
        )
    apps = "".join(_app(a, "active") for a in service.apps)
    apps += "".join(_app(a, "pending") for a in service.pending_apps)
    drift = f'<div class="drift">{e(service.drift)}</div>' if service.drift else ""
    return (
        f'<tr class="service" data-service="{e(service.name)}">'
        f'<td><span class="name">{e(service.name)}</span>'
        f'<div class="muted">{e(service.namespace)}</div></td>'
        f'<td>{_badge(service.health)}<div class="health-message">{e(service.message)}</div>'
        f"{drift}</td>"
        f'<td class="last-action"><span class="action">{e(service.last_action or "—")}</span></td>'
        f"<td><code>{e(service.revision or '—')}</code></td>"
        f"<td>{clusters}</td>"
        f'<td class="since">{e(service.since_transition or "—")}</td>'
        f'<td><ul class="apps">{apps}</ul></td></tr>'
    )


def environment_page(view: EnvironmentView) -> str:
    s = view.summary
    body = (
        f'<h1>Environment <span class="name">{e(s.name)}</span></h1>'
        f'<p class="muted">namespace {e(s.namespace)}</p>'
        f'<dl class="summary"><dt>rollout</dt><dd>{_state(s.state, s.in_progress, s.failed)} '
        f'<a href="{e(env_path(s.name, "/rollout"))}">changes and timeline</a>'
        f"{_rolling_out(s)}{_hold(s)}</dd>"
        f"<dt>revision applied</dt><dd>{_commit(s.applied)}</dd>"
        f'<dt>health</dt><dd class="health-summary">{e(s.health)}</dd>'
        f'<dt>drift</dt><dd class="drift">{e(s.drift)}</dd></dl>'
    )
    head = ["service", "health", "last action", "revision", "RayCluster", "since", "Serve apps"]
    for wave in view.waves:
        body += f'<h2 class="wave">Wave {e(wave.number)}</h2>'
        body += _table(head, [_service_row(svc) for svc in wave.services], "services")
    if not view.waves:
        body += '<p class="muted">No services.</p>'
    body += "<h2>Rollout history</h2>"
    if view.history:
        head = ["started", "revision", "outcome", "took", "services changed", "message"]
        body += _table(head, [_past(p) for p in view.history], "history")
    else:
        body += '<p class="muted">No rollout has finished yet.</p>'
    body += "<h2>Events</h2>"
    if view.events:
        head = ["service", "type", "reason", "message", "count", "last seen", "from"]
        body += _table(head, [_event(ev) for ev in view.events], "events")
    else:
        body += '<p class="muted">No Events about its RayServices.</p>'
    return page(s.name, env_path(s.name), body, s.in_progress)


def _event(event: EventView) -> str:
    kind = "warning" if event.type == "Warning" else "normal"
    return (
        f'<tr class="event {kind}"><td>{e(event.service)}</td><td>{e(event.type)}</td>'
        f"<td>{e(event.reason)}</td><td>{e(event.message)}</td><td>{e(event.count)}</td>"
        f'<td title="{e(event.last_seen)}">{e(event.age)}</td><td>{e(event.source)}</td></tr>'
    )


def _past(past: PastRolloutView) -> str:
    failed = past.outcome in ("failed", "rolled-back", "blocked")
    message = past.message + (f" (at {past.failed_service})" if past.failed_service else "")
    return (
        f'<tr class="past past-{e(past.outcome)}"><td><time>{e(past.started)}</time></td>'
        f"<td>{_commit(past.revision)}</td><td>{_state(past.outcome, False, failed)}</td>"
        f"<td>{e(past.duration)}</td><td>{e(past.changes)}</td><td>{e(message)}</td></tr>"
    )


def _detail(detail: str) -> str:
    where, arrow, new = detail.rpartition(" → ")
    field, colon, old = where.rpartition(": ")
    if arrow and colon:
        return f'{e(field)}: <span class="old">{e(old)}</span> → <span class="new">{e(new)}</span>'
    return e(detail)


def _change(change: ChangeView) -> str:
    details = "".join(f"<li>{_detail(d)}</li>" for d in change.details)
    warnings = "".join(f'<li class="warning">{e(w)}</li>' for w in change.warnings)
    return (
        f'<li class="change" data-service="{e(change.service)}"><span class="name">'
        f'{e(change.service)}</span> <span class="muted">(wave {e(change.wave)})</span> '
        f'<span class="action action-{e(change.action)}">{e(change.action)}</span>: '
        f"{e(change.summary)}<ul>{details}{warnings}</ul></li>"
    )


def _step(step: StepView) -> str:
    return (
        f'<tr class="step step-{e(step.kind)}"><td><time>{e(step.at)}</time></td>'
        f"<td>{e(step.label)}</td><td>{e(step.duration)}</td><td>{e(step.message)}</td></tr>"
    )


def rollout_page(name: str, view: RolloutView | None) -> str:
    body = f'<h1>Rollout of <a href="{e(env_path(name))}" class="name">{e(name)}</a></h1>'
    if view is None:
        body += '<p class="muted">No rollout recorded yet.</p>'
        return page(f"{name} rollout", env_path(name, "/rollout"), body, False)
    failed = view.outcome in ("failed", "rolled-back", "blocked")
    body += (
        f'<dl class="summary"><dt>revision</dt><dd>{_commit(view.revision)}</dd>'
        f"<dt>state</dt><dd>{_state(view.state, view.in_progress, failed)}</dd>"
    )
    if view.failed_service:
        body += f'<dt>failed service</dt><dd class="failed-service">{e(view.failed_service)}</dd>'
    if view.message:
        body += f'<dt>message</dt><dd class="rollout-message">{e(view.message)}</dd>'
    body += "</dl><h2>Changes</h2>"
    if view.changes:
        body += f'<ul class="diff">{"".join(_change(c) for c in view.changes)}</ul>'
    else:
        body += '<p class="muted">No changes.</p>'
    body += "<h2>Timeline</h2>"
    body += _table(["at", "step", "took", "message"], [_step(s) for s in view.timeline], "timeline")
    return page(f"{name} rollout", env_path(name, "/rollout"), body, view.in_progress)


def message_page(title: str, text: str) -> str:
    return page(title, "/", f"<h1>{e(title)}</h1><p>{e(text)}</p>", False)
