"""The status page's HTML: view model → one document per page, rendered by Jinja2 from
``web/templates/``. Pure.

Autoescape is on for every template: each value (names, commit messages and KubeRay's
messages come from Git and from the cluster) is escaped, and the templates mark nothing safe;
class names are chosen from fixed sets, links only to this site or to the configured forge. No
inline script or style: the page loads ``/ui/app.css`` and ``/ui/app.js`` from the same
origin, so a strict Content-Security-Policy holds. ``app.js`` re-fetches the page while a
rollout runs and swaps ``<main>``.
"""

from __future__ import annotations

from typing import Any

import jinja2

from gitsync.model import Health
from gitsync.web.view import EnvironmentView, Overview, RolloutView


def quote(text: str) -> str:
    """Percent-encodes everything but unreserved characters (RFC 3986), for a path segment.

    The same as ``urllib.parse.quote(text, safe="")`` (tests/web/test_view.py checks), written
    out because the pure core does not import urllib, whose other half is the network."""
    return "".join(
        chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "-._~") else f"%{b:02X}"
        for b in text.encode()
    )


def env_path(name: str, suffix: str = "") -> str:
    return f"/environments/{quote(name)}{suffix}"


def api_path(page: str) -> str:
    return "/api/v1" + ("/environments" if page == "/" else page)


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("gitsync.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt field fails the render, not a blank cell
    trim_blocks=True,
    lstrip_blocks=True,
)
_TEMPLATES.globals.update(
    env_path=env_path, api_path=api_path, healths=frozenset(str(h) for h in Health)
)


def _render(template: str, **values: Any) -> str:
    return _TEMPLATES.get_template(template).render(**values) + "\n"


def overview_page(view: Overview) -> str:
    return _render(
        "overview.html", title="environments", path="/", view=view, in_progress=view.in_progress
    )


def environment_page(view: EnvironmentView) -> str:
    s = view.summary
    return _render(
        "environment.html",
        title=s.name,
        path=env_path(s.name),
        view=view,
        in_progress=s.in_progress,
    )


def rollout_page(name: str, view: RolloutView | None) -> str:
    return _render(
        "rollout.html",
        title=f"{name} rollout",
        path=env_path(name, "/rollout"),
        name=name,
        view=view,
        in_progress=view is not None and view.in_progress,
    )


def message_page(title: str, text: str) -> str:
    return _render("message.html", title=title, path="/", text=text, in_progress=False)
