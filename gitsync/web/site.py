"""The status page's HTTP answers: routes, auth, security headers, the live-status cache.

Owns which path shows what (``/``, ``/environments/<name>``, ``/environments/<name>/rollout``
and the same under ``/api/v1`` as JSON, ``/api/v1/previews``, the API's OpenAPI document at
``/api/v1/openapi.json`` (:mod:`gitsync.web.openapi`), the files under ``/ui/``), who may
see it (``ui.auth``: a bearer token or basic auth read from a file or the environment at each
request, compared in constant time; without auth only on a loopback listen address), and the
headers every answer carries (a strict Content-Security-Policy, nosniff, no referrer).
Read-only: no route changes anything. Everything shown is read from the cluster, never from
this process's memory, so every replica (leader or standby) shows the same page: the state
ConfigMaps in the state namespace (one list: the rollout state, and the rollout records,
history, last actions and drift facts the leader keeps there, :mod:`gitsync.web.stored`) and
the live RayServices through :class:`~gitsync.kube.rayservices.RayServices` (one list per
environment namespace), at most once per ``ui.refreshInterval`` however many browsers poll.
:mod:`gitsync.server` routes GET requests here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import unquote

from gitsync import __version__, names
from gitsync.config import AgentConfig, UiSettings
from gitsync.errors import GitsyncError
from gitsync.kube.client import ApiException
from gitsync.kube.events import list_events
from gitsync.kube.rayservices import RayServices
from gitsync.kube.state import StateStore, hold_from, state_from
from gitsync.model import ServiceKey
from gitsync.report.factory import forge_root, repository_path
from gitsync.source.auth import read_token
from gitsync.web import openapi, render
from gitsync.web.facts import Clock, EnvironmentFacts, Forge, PreviewFacts
from gitsync.web.stored import from_data, previews_from
from gitsync.web.view import as_json, environment_view, overview, rollout_view

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC = {
    "/ui/app.css": "text/css; charset=utf-8",
    "/ui/app.js": "text/javascript; charset=utf-8",
    "/ui/favicon.svg": "image/svg+xml",
}
_ENV_ROUTE = re.compile(r"^/environments/([^/]+)(/rollout)?/?$")
# Each route of the JSON API as its OpenAPI document declares it ({name}: one path segment).
_API_ROUTES = tuple(
    (re.compile("^" + re.escape(route).replace(r"\{name\}", "([^/]+)") + "/?$"), route)
    for route, *_ in openapi.ROUTES
)
_LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|::1|localhost)$")


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]


def is_loopback(host: str) -> bool:
    return bool(_LOOPBACK.match(host.strip("[]")))


def forge_of(config: AgentConfig) -> Forge | None:
    """Where commit links point: the status provider's forge (none with git notes)."""
    status = config.status
    if status.provider == "gitnotes":
        return None
    repository = (status.repository or repository_path(config.repository.url)).strip("/")
    if status.provider == "github":
        api = (status.url or "https://api.github.com").rstrip("/")
        root = (
            "https://github.com" if api == "https://api.github.com" else api.removesuffix("/api/v3")
        )
    else:
        root = status.url or forge_root(config.repository.url) or ""
    return Forge(status.provider, root.rstrip("/"), repository) if root else None


class _TtlCache:
    """One value per key, re-read when older than ``ttl``; concurrent readers of a stale key
    wait for one read instead of each making their own."""

    def __init__(self, ttl: float, mono: Callable[[], float]) -> None:
        self.ttl, self._mono = ttl, mono
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str], tuple[float, Any]] = {}

    def get(self, key: tuple[str, str], read: Callable[[], Any]) -> Any:
        with self._lock:
            cached = self._values.get(key)
            if cached is not None and self._mono() - cached[0] < self.ttl:
                return cached[1]
            value = read()
            self._values[key] = (self._mono(), value)
            return value


def _slim_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """What the page shows of an Event: about which object, its type, reason, message, how
    often and when it was last seen (the newest of the times the writers fill)."""
    metadata = event.get("metadata") or {}
    series = event.get("series") or {}
    last = (
        series.get("lastObservedTime")
        or event.get("lastTimestamp")
        or event.get("eventTime")
        or metadata.get("creationTimestamp")
    )
    return {
        "object": str((event.get("involvedObject") or {}).get("name", "")),
        "type": str(event.get("type") or "Normal"),
        "reason": str(event.get("reason") or ""),
        "message": str(event.get("message") or ""),
        "count": int(event.get("count") or series.get("count") or 1),
        "last": str(last or ""),
        "source": str(
            (event.get("source") or {}).get("component") or event.get("reportingComponent") or ""
        ),
    }


def _slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What the page needs of a RayService: status, generation, gitsync's annotations, the
    Serve config (its app names) and suspend. Not the rest of the spec (env values …)."""
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    return {
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "generation": metadata.get("generation"),
            "annotations": {k: v for k, v in annotations.items() if k.startswith(names.PREFIX)},
        },
        "spec": {
            "serveConfigV2": spec.get("serveConfigV2"),
            "rayClusterConfig": {"suspend": (spec.get("rayClusterConfig") or {}).get("suspend")},
        },
        "status": obj.get("status"),
    }


class StatusSite:
    def __init__(
        self,
        services: RayServices,
        state: StateStore,
        settings: UiSettings,
        forge: Forge | None,
        *,
        loopback: bool,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.services, self.state = services, state
        self.settings, self.forge, self.loopback = settings, forge, loopback
        self._wall, self._mono = wall, mono
        self._cache = _TtlCache(settings.refresh_seconds, mono)
        self._openapi = openapi.document(__version__)
        self._static = {
            path: resources.files("gitsync.web").joinpath("static", path.rpartition("/")[2])
            .read_bytes()
            for path in STATIC
        }  # fmt: skip
        if settings.enabled and not settings.auth.configured and not loopback:
            log.warning(
                "the status page is off: the agent listens beyond loopback and ui.auth is not "
                "configured (set ui.auth.bearerTokenFile or ui.auth.basicAuthFile)"
            )

    # -- routing -------------------------------------------------------------------------------

    @staticmethod
    def serves(path: str) -> bool:
        return path == "/" or path.startswith(("/environments/", "/api/v1/", "/ui/"))

    def handle(self, path: str, headers: Mapping[str, str]) -> Response:
        """Answers one GET of a path :meth:`serves` (headers lower-cased)."""
        refused = self._refused(headers)
        if refused is not None:
            return refused
        if path in STATIC:
            return Response(200, STATIC[path], self._static[path], SECURITY_HEADERS)
        try:
            return self._route(path)
        except GitsyncError as exc:
            return self._error(path, 503, f"cannot read the cluster: {exc}")

    def _route(self, path: str) -> Response:
        if path.startswith("/api/v1/"):
            return self._api(path)
        if path == "/":
            return self._html(render.overview_page(self._overview()))
        found = _ENV_ROUTE.match(path)
        if found is None:
            return self._error(path, 404, "not found")
        name, rollout = unquote(found.group(1)), bool(found.group(2))
        env = self._facts(name)
        if env is None:
            return self._error(path, 404, f"no environment {name!r}")
        if rollout:
            return self._html(
                render.rollout_page(name, rollout_view(env, self.forge, self._clock()))
            )
        return self._html(render.environment_page(environment_view(env, self.forge, self._clock())))

    def _api(self, path: str) -> Response:
        """The JSON API: the routes its OpenAPI document declares (openapi.ROUTES), and the
        document itself; each also with a trailing slash."""
        if path == openapi.OPENAPI_PATH:
            return self._json(self._openapi)
        matched = [
            (route, found) for pattern, route in _API_ROUTES if (found := pattern.match(path))
        ]
        if not matched:
            return self._error(path, 404, "not found")
        [(route, found)] = matched
        if route == "/api/v1/environments":
            return self._json(as_json(self._overview()))
        if route == "/api/v1/previews":
            return self._json(as_json(self._overview())["previews"])
        name = unquote(found.group(1))
        env = self._facts(name)
        if env is None:
            return self._error(path, 404, f"no environment {name!r}")
        if route.endswith("/rollout"):
            view = rollout_view(env, self.forge, self._clock())
            return self._json(as_json(view) if view is not None else None)
        return self._json(as_json(environment_view(env, self.forge, self._clock())))

    # -- auth ----------------------------------------------------------------------------------

    def _refused(self, headers: Mapping[str, str]) -> Response | None:
        if not self.settings.enabled:
            return self._plain(404, "the status page is disabled (ui.enabled: false)")
        auth = self.settings.auth
        if not auth.configured:
            if self.loopback:
                return None
            return self._plain(
                403,
                "the status page is off: gitsync listens beyond loopback and ui.auth is not "
                "configured; set ui.auth.bearerTokenFile (or bearerTokenEnv, basicAuthFile) in "
                "the agent config, or listen on 127.0.0.1",
            )
        given = headers.get("authorization", "")
        try:
            if auth.bearer is not None:
                scheme, expected = "Bearer", read_token(auth.bearer)
                scheme_given, _, credential = given.partition(" ")
                ok = scheme_given.lower() == "bearer" and hmac.compare_digest(
                    credential.strip().encode(), expected.encode()
                )
            else:
                assert auth.basic_file is not None
                scheme, expected = "Basic", auth.basic_file.read_text().strip()
                ok = _basic_matches(given, expected)
        except (GitsyncError, OSError) as exc:
            log.error("status page auth: cannot read the credential: %s", type(exc).__name__)
            return self._plain(500, "the status page's credential cannot be read (ui.auth)")
        if ok:
            return None
        challenge = {"WWW-Authenticate": f'{scheme} realm="gitsync"'}
        return self._plain(401, "authentication required", challenge)

    # -- facts ---------------------------------------------------------------------------------

    def _clock(self) -> Clock:
        # Stored timelines carry wall-clock times only: durations are measured on it too.
        now = self._wall()
        return Clock(now, now)

    def _live(self, namespace: str, environment: str) -> dict[ServiceKey, dict[str, Any]]:
        def read() -> dict[ServiceKey, dict[str, Any]]:
            listed = self.services.list_managed(namespace, environment)
            return {key: _slim(obj) for key, obj in listed.items()}

        live: dict[ServiceKey, dict[str, Any]] = self._cache.get((namespace, environment), read)
        return live

    def _events(self, namespace: str, names: set[str]) -> tuple[dict[str, Any], ...]:
        """The Events about the environment's RayServices; none when they cannot be read
        (the page shows the rest: an agent deployed with older RBAC may not list Events)."""

        def read() -> list[dict[str, Any]]:
            try:
                return [_slim_event(e) for e in list_events(self.services.api, namespace)]
            except (GitsyncError, ApiException, OSError) as exc:
                log.warning("cannot list the Events in %s: %s", namespace, exc)
                return []

        listed: list[dict[str, Any]] = self._cache.get(("events", namespace), read)
        return tuple(e for e in listed if e["object"] in names)

    def _stored(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        stored: tuple[dict[str, dict[str, str]], dict[str, str]]
        stored = self._cache.get(("state", ""), self.state.read_all)
        return stored

    def _all_facts(self, only: str | None = None) -> list[EnvironmentFacts]:
        environments, _ = self._stored()
        found = []
        for name, data in environments.items():
            memory = from_data(name, data) if only is None or name == only else None
            if memory is None:
                continue
            state = state_from(name, data) if "phase" in data else None
            live = self._live(memory.namespace, name)
            events = self._events(memory.namespace, {key.name for key in live})
            found.append(
                (
                    memory.position,
                    EnvironmentFacts(
                        name,
                        memory.namespace,
                        memory.record,
                        memory.applied,
                        state,
                        live,
                        memory.actions,
                        memory.drift,
                        memory.history,
                        events,
                        hold_from(data),
                    ),
                )
            )
        return [facts for _, facts in sorted(found, key=lambda f: (f[0], f[1].name))]

    def _facts(self, name: str) -> EnvironmentFacts | None:
        found = self._all_facts(only=name)
        return found[0] if found else None

    def _previews(self) -> tuple[PreviewFacts, ...]:
        return previews_from(self._stored()[1])

    def _overview(self) -> Any:
        return overview(self._all_facts(), self._previews(), self.forge, self._clock())

    # -- answers -------------------------------------------------------------------------------

    def _html(self, text: str, status: int = 200) -> Response:
        return Response(status, "text/html; charset=utf-8", text.encode(), SECURITY_HEADERS)

    def _json(self, value: Any, status: int = 200) -> Response:
        body = json.dumps(value, ensure_ascii=False).encode()
        return Response(status, "application/json", body, SECURITY_HEADERS)

    def _plain(self, status: int, text: str, extra: Mapping[str, str] | None = None) -> Response:
        body = json.dumps({"error": text}).encode()
        return Response(status, "application/json", body, {**SECURITY_HEADERS, **(extra or {})})

    def _error(self, path: str, status: int, text: str) -> Response:
        if path.startswith("/api/"):
            return self._json({"error": text}, status)
        return self._html(render.message_page("gitsync", text), status)


def _basic_matches(header: str, expected: str) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(given, expected.encode())
