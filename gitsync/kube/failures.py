"""What an answer from the Kubernetes API server means for gitsync — the one place API statuses
map to error classes — and the retry every API call goes through.

Transient (retried here, with exponential backoff and jitter, or the wait the server asks for
in ``Retry-After``): no answer at all (connection refused or reset, TLS, a timeout), 429 (API
Priority and Fairness), 500/502/503/504 (etcd unavailable or slow, a restarting server), and a
409 that is *not* a server-side-apply field conflict (optimistic concurrency: "the object has
been modified; please apply your changes to the latest version and try again"). After the
last attempt: :class:`~gitsync.errors.ClusterUnreachable` — gitsync's own failure, reported as
an ``error`` commit status and retried by the agent, never a failed rollout.

Access refusals (never retried, whatever the request): 401 → :class:`~gitsync.errors.Unauthorized`
(the credentials), 403 → :class:`~gitsync.errors.Forbidden` (RBAC; the API server's message names
the user, verb, resource and namespace), a 404 for a resource *type* — a Status without a
``details.name``, "the server could not find the requested resource" — →
:class:`~gitsync.errors.NotInstalled` (its CRD is missing). :func:`reaching_the_api` raises
them for every call it wraps, named by the :class:`Resource` the call is about
(:func:`about`); :func:`explained` turns one that escaped anywhere else into the same error.

Other refusals (never retried): every other status. The caller names them by what it was doing,
through :func:`refusal`: 404 on a namespaced apply → :class:`~gitsync.errors.NamespaceMissing`,
a field-manager 409 → :class:`~gitsync.errors.ConflictError`, else
:class:`~gitsync.errors.ApplyError`.

The official client retries none of this by itself: its ``client_go_retries`` (off by
default) covers only GET and HEAD answered with ``Retry-After``; urllib3's default retries
connection errors three times at once; and no request has a timeout unless given one, so a
hung API server would hang the agent.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import urllib3
from kubernetes import client

from gitsync.errors import (
    AccessRefused,
    ApplyError,
    ClusterUnreachable,
    ConflictError,
    Forbidden,
    GitsyncError,
    ManifestRefused,
    NamespaceMissing,
    NotInstalled,
    Permanent,
    Temporary,
    Unauthorized,
)
from gitsync.model import ServiceKey

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ApiRetry:
    attempts: int = 5
    backoff: float = 0.5  # the first wait; doubles per attempt, ±20% jitter
    max_wait: float = 10.0  # the longest single wait, whatever Retry-After asks for


RETRY = ApiRetry()


@dataclass(frozen=True)
class Resource:
    """What an API call is about, to name it when the API server refuses it."""

    kind: str
    group_version: str
    install: str  # what to do when the API server does not serve it


RAYSERVICE = Resource(
    "RayService",
    "ray.io/v1",
    "install the KubeRay operator (its Helm chart installs the CRDs) or apply its CRDs "
    "with `kubectl apply --server-side`",
)
CORE = Resource("core", "v1", "the API server does not serve core/v1: is this a Kubernetes API?")
COORDINATION = Resource(
    "Lease", "coordination.k8s.io/v1", "use Kubernetes 1.14 or later, or disable leaderElection"
)


def message(exc: client.ApiException) -> str:
    """The server's own message (a ``Status`` object's ``message``), else the status line."""
    text = _status(exc).get("message")
    return str(text) if text else f"{exc.status} {exc.reason}"


def _status(exc: client.ApiException) -> dict[str, Any]:
    """The ``Status`` object the API server sends with an error, or {}."""
    try:
        body = json.loads(exc.body)
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def field_conflict(exc: client.ApiException) -> bool:
    """A server-side apply conflict: another field manager owns a field gitsync sets. Only
    these 409s are refusals; ``force`` or a change in Git resolves them, a retry never does."""
    if exc.status != 409:
        return False
    causes = (_status(exc).get("details") or {}).get("causes") or []
    # A StatusCause names its type "reason" in JSON.
    return any(c.get("reason") == "FieldManagerConflict" for c in causes if isinstance(c, dict))


def schema_refusal(exc: client.ApiException) -> bool:
    """A server-side apply whose body does not fit the CRD's schema (``replicas: "two"``, a
    field the schema does not declare, duplicate list keys). kube-apiserver's field manager
    answers it with a 500 InternalError ("failed to create typed patch object", from
    ``structuredMergeManager.Apply`` in k8s.io/apiserver's fieldmanager), but sending the same
    body again gets the same answer: it is the manifest's fault, not the server's."""
    return exc.status == 500 and "failed to create typed patch object" in message(exc)


def retry_rule(exc: client.ApiException) -> Temporary | Permanent:
    """Temporary when the same request may well succeed if sent again: 429, 5xx (but not a
    :func:`schema_refusal`), no answer, and a 409 ``Conflict`` that is not a field conflict
    (``AlreadyExists`` is a 409 too: final); its delay is the server's ``Retry-After``, if
    any. Permanent otherwise."""
    if schema_refusal(exc):
        return Permanent()
    if exc.status in TRANSIENT_STATUSES or exc.status == 0:  # 0: the client's TLS failure
        return Temporary(retry_after(exc))
    if exc.status == 409 and _status(exc).get("reason") == "Conflict" and not field_conflict(exc):
        return Temporary(retry_after(exc))
    return Permanent()


def temporary(exc: client.ApiException) -> bool:
    """:func:`retry_rule` says the answer is :class:`~gitsync.errors.Temporary`."""
    return isinstance(retry_rule(exc), Temporary)


def retry_after(exc: client.ApiException) -> float | None:
    """Seconds the server asked to wait (``Retry-After`` on a 429 or 503), else None."""
    headers = exc.headers or {}
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None or not str(value).strip().isdigit():
        return None
    return float(str(value).strip())


def wait_before(attempt: int, exc: client.ApiException | None, policy: ApiRetry) -> float:
    """The wait after failed attempt ``attempt`` (1-based): the delay the :func:`retry_rule`
    of the answer names (the server's ``Retry-After``) when it has one, else exponential
    backoff with jitter; never more than ``policy.max_wait``."""
    rule = retry_rule(exc) if exc is not None else None
    asked = rule.delay if isinstance(rule, Temporary) else None
    if asked is None:
        asked = policy.backoff * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)  # noqa: S311 - jitter
    return float(min(asked, policy.max_wait))


def not_served(exc: client.ApiException) -> bool:
    """A 404 for the resource type rather than for one object: a missing object's NotFound
    names it (``details.name``), a type the API server does not serve names nothing (its body
    is "the server could not find the requested resource", or not even a Status)."""
    return exc.status == 404 and not (_status(exc).get("details") or {}).get("name")


def access_refused(exc: client.ApiException) -> bool:
    """401, 403 or a resource type not served: refusals no request, and no retry, gets past."""
    return exc.status in (401, 403) or not_served(exc)


def access_error(exc: client.ApiException, resource: Resource | None) -> AccessRefused:
    """An :func:`access_refused` answer as gitsync's error: what failed, on what, what to do."""
    if exc.status == 401:
        return Unauthorized(
            "the Kubernetes API server refused gitsync's credentials (401 Unauthorized): the "
            "token or client certificate in the kubeconfig (or the service account's token) is "
            "wrong or expired; renew it (`kubectl auth whoami` shows who you are)"
        )
    if exc.status == 403:
        return Forbidden(
            f"not allowed (403 Forbidden): {message(exc)}; grant gitsync's RBAC "
            "(deploy/base/rbac.yaml, and a RoleBinding per managed namespace as in "
            "deploy/example/managed-namespaces.yaml)"
        )
    if resource is None:
        return NotInstalled(
            f"the API server does not serve the resource asked for (404: {message(exc)}); "
            "is the CRD installed?"
        )
    return NotInstalled(
        f"the {resource.kind} CRD ({resource.group_version}) is not installed: {resource.install}"
    )


def explained(exc: BaseException) -> Exception | None:
    """gitsync's error for an API answer that escaped without one, else None."""
    if isinstance(exc, client.ApiException):
        if access_refused(exc):
            return access_error(exc, None)
        return GitsyncError(
            f"the Kubernetes API server refused a request ({exc.status}): {message(exc)}"
        )
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return unreachable(f"{type(exc).__name__}: {exc}", 1)
    return None


def refusal(exc: client.ApiException, key: ServiceKey, verb: str) -> ApplyError:
    """A non-transient answer to ``verb`` on ``key`` as gitsync's error."""
    if field_conflict(exc):
        return ConflictError(
            key,
            f"{verb} conflicts with another field manager: {message(exc)}; fix it in Git or in "
            "the other tool, or set rollout.forceConflicts in the agent config",
        )
    if exc.status == 404 and "namespaces" in message(exc):
        return NamespaceMissing(
            key,
            f"namespace {key.namespace} does not exist; create it or set createNamespace: true "
            "on the environment in gitsync.yaml",
        )
    if schema_refusal(exc):
        # "failed to create typed patch object (ns/name; ray.io/v1, Kind=RayService): .spec…":
        # the object is named already; keep what is wrong and where.
        detail = message(exc).split("): ", 1)[-1]
        return ManifestRefused(key, f"{verb} refused, the CRD schema rejects it: {detail}")
    if exc.status in (400, 422):
        return ManifestRefused(key, f"{verb} refused ({exc.status}): {message(exc)}")
    return ApplyError(key, f"{verb} refused ({exc.status}): {message(exc)}")


def unreachable(cause: str, attempts: int) -> ClusterUnreachable:
    return ClusterUnreachable(
        f"the Kubernetes API server is unreachable or failing ({cause}; {attempts} attempts); "
        "check the kubeconfig (or the in-cluster service account) and that the API server "
        "and etcd are up"
    )


def about(resource: Resource) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """:func:`reaching_the_api` for calls about ``resource``, which names it in errors."""

    def decorate(call: Callable[P, R]) -> Callable[P, R]:
        return reaching_the_api(call, resource=resource)

    return decorate


def reaching_the_api(
    call: Callable[P, R],
    *,
    policy: ApiRetry = RETRY,
    sleep: Callable[[float], None] = time.sleep,
    resource: Resource | None = None,
) -> Callable[P, R]:
    """Runs ``call`` (one API request, or a read-then-write of one object) again while the
    API server does not answer or answers transiently; after ``policy.attempts`` raises
    :class:`ClusterUnreachable`. An :func:`access_refused` answer raises its
    :func:`access_error` (about ``resource``). Other refusals pass through as the call raised
    them: a call that maps an ApiException to its own error lets transient and access ones
    through unmapped (``if temporary(exc) or access_refused(exc): raise``)."""

    @functools.wraps(call)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, policy.attempts + 1):
            answer: client.ApiException | None = None
            try:
                return call(*args, **kwargs)
            except urllib3.exceptions.HTTPError as exc:
                cause = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
            except client.ApiException as exc:
                if access_refused(exc):
                    raise access_error(exc, resource) from None
                if not temporary(exc):
                    raise
                answer, cause = exc, f"HTTP {exc.status}: {message(exc)}"
            if attempt == policy.attempts:
                raise unreachable(cause, attempt) from None
            wait = wait_before(attempt, answer, policy)
            log.warning(
                "Kubernetes API call %s failed, retrying in %.1fs: %s",
                call.__name__,
                wait,
                cause,
            )
            sleep(wait)
        raise AssertionError("unreachable")

    return wrapper
