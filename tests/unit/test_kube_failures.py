"""API answers → gitsync's errors, in one table, and the retry every API call goes through:
transient answers (no answer, 429, 5xx, an optimistic-concurrency 409) are retried with
backoff or the server's ``Retry-After``, then become ClusterUnreachable; refusals pass at once.

Before: no API call was retried; a 500 or 429 on an apply failed the rollout (a ``failure``
status, a rollback, no retry until the next commit); every 409 was called a field conflict;
and no request had a timeout."""

from __future__ import annotations

import contextlib
import json
import socket
import time

import pytest
import urllib3
from kubernetes import client

from gitsync.errors import (
    ApplyError,
    ClusterUnreachable,
    ConflictError,
    Forbidden,
    ManifestRefused,
    NamespaceMissing,
    NotInstalled,
    Permanent,
    Temporary,
    Unauthorized,
)
from gitsync.kube.client import TRANSPORT_RETRIES, with_timeouts
from gitsync.kube.failures import (
    RAYSERVICE,
    ApiRetry,
    about,
    access_refused,
    explained,
    not_served,
    reaching_the_api,
    refusal,
    retry_after,
    retry_rule,
    wait_before,
)
from gitsync.model import ServiceKey

KEY = ServiceKey("ns", "ranker")


def answer(status: int, reason: str = "", causes: list[dict[str, str]] | None = None,
           headers: dict[str, str] | None = None) -> client.ApiException:  # fmt: skip
    exc = client.ApiException(status=status, reason=reason or "x")
    body = {"kind": "Status", "reason": reason, "message": f"said {status} {reason}"}
    if causes is not None:
        body["details"] = {"causes": causes}  # type: ignore[assignment]
    exc.body = json.dumps(body)
    exc.headers = headers or {}
    return exc


def typed_patch_refusal() -> client.ApiException:
    """kube-apiserver 1.35's answer to a server-side apply of ``replicas: "two"``."""
    exc = answer(500, "InternalError")
    exc.body = json.dumps(
        {
            "kind": "Status",
            "reason": "InternalError",
            "message": "failed to create typed patch object (ns/ranker; ray.io/v1, Kind=RayService)"
            ": .spec.rayClusterConfig.workerGroupSpecs[0].replicas: expected numeric (int or "
            'float), got string "two"',
        }
    )
    return exc


# as kube-apiserver 1.35 sends it
FIELD = [
    {
        "reason": "FieldManagerConflict",
        "message": 'conflict with "x"',
        "field": ".spec.serveConfigV2",
    }
]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (answer(429, "TooManyRequests"), True),
        (answer(500, "InternalError"), True),
        (typed_patch_refusal(), False),  # the body does not fit the schema: asking again won't
        (answer(502), True),
        (answer(503, "ServiceUnavailable"), True),
        (answer(504, "Timeout"), True),
        (answer(0), True),  # the client's TLS failure
        (answer(409, "Conflict"), True),  # "the object has been modified; try again"
        (answer(409, "Conflict", FIELD), False),  # server-side apply: another manager's field
        (answer(409, "AlreadyExists"), False),
        (answer(400, "BadRequest"), False),
        (answer(403, "Forbidden"), False),
        (answer(404, "NotFound"), False),
        (answer(422, "Invalid"), False),
    ],
)
def test_which_answers_are_temporary(exc: client.ApiException, expected: bool) -> None:
    assert retry_rule(exc) == (Temporary() if expected else Permanent())


def test_a_temporary_answer_carries_the_wait_the_server_asked_for() -> None:
    assert retry_rule(answer(429, headers={"Retry-After": "7"})) == Temporary(7.0)
    assert retry_rule(answer(503, headers={"Retry-After": "soon"})) == Temporary(None)


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (answer(409, "Conflict", FIELD), ConflictError),
        (answer(404, "NotFound"), ApplyError),
        (answer(422, "Invalid"), ManifestRefused),
        (answer(400, "BadRequest"), ManifestRefused),
        (answer(403, "Forbidden"), ApplyError),  # gitsync's own permissions: not the commit's
    ],
)
def test_refusals_map_to_one_error_class_each(
    exc: client.ApiException, error: type[ApplyError]
) -> None:
    found = refusal(exc, KEY, "apply")
    assert type(found) is error
    assert found.key == KEY
    assert json.loads(exc.body)["message"] in str(found)  # the server's own message


def test_a_schema_refusal_says_what_and_where() -> None:
    found = refusal(typed_patch_refusal(), KEY, "apply")
    assert type(found) is ManifestRefused
    assert str(found) == (
        "ns/ranker: apply refused, the CRD schema rejects it: "
        ".spec.rayClusterConfig.workerGroupSpecs[0].replicas: expected numeric (int or float), "
        'got string "two"'
    )


def test_a_missing_namespace_says_so() -> None:
    exc = client.ApiException(status=404, reason="NotFound")
    exc.body = json.dumps({"message": 'namespaces "ns" not found'})
    assert isinstance(refusal(exc, KEY, "apply"), NamespaceMissing)


def test_retry_after_is_obeyed_and_capped() -> None:
    policy = ApiRetry(backoff=0.5, max_wait=10)
    assert retry_after(answer(429, headers={"Retry-After": "3"})) == 3
    assert wait_before(1, answer(429, headers={"Retry-After": "3"}), policy) == 3
    assert wait_before(1, answer(429, headers={"retry-after": "600"}), policy) == 10
    assert retry_after(answer(429)) is None
    first, third = wait_before(1, answer(500), policy), wait_before(3, answer(500), policy)
    assert 0.4 <= first <= 0.6
    assert 1.6 <= third <= 2.4  # doubles, with jitter


def retried(answers: list[BaseException | str]) -> tuple[list[float], object]:
    waits: list[float] = []
    script = iter(answers)

    def call() -> str:
        step = next(script)
        if isinstance(step, BaseException):
            raise step
        return step

    wrapped = reaching_the_api(call, policy=ApiRetry(attempts=4, backoff=0.1), sleep=waits.append)
    return waits, wrapped


def test_transient_answers_are_retried_until_one_succeeds() -> None:
    refused = urllib3.exceptions.NewConnectionError(None, "refused")  # type: ignore[arg-type]
    waits, call = retried(
        [answer(500), answer(429, headers={"Retry-After": "2"}), refused, "applied"]
    )
    assert call() == "applied"  # type: ignore[operator]
    assert len(waits) == 3
    assert waits[1] == 2  # what the server asked


def test_after_the_last_attempt_the_cluster_is_unreachable() -> None:
    waits, call = retried([answer(503)] * 4)
    with pytest.raises(ClusterUnreachable, match=r"HTTP 503: said 503.*4 attempts"):
        call()  # type: ignore[operator]
    assert len(waits) == 3


def test_a_timeout_is_retried() -> None:
    timeout = urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out")  # type: ignore[arg-type]
    waits, call = retried([timeout, "ok"])
    assert call() == "ok"  # type: ignore[operator]
    assert len(waits) == 1


def test_refusals_are_not_retried() -> None:
    waits, call = retried([answer(409, "Conflict", FIELD), "never"])
    with pytest.raises(client.ApiException):
        call()  # type: ignore[operator]
    assert waits == []


def test_every_request_has_a_timeout_and_is_sent_once() -> None:
    """A server that accepts and never answers: the call ends at the read timeout, after one
    request (urllib3's default retries sent a timed-out GET 4 times, under gitsync's own)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        configuration = client.Configuration()
        configuration.host = f"http://127.0.0.1:{listener.getsockname()[1]}"
        configuration.retries = TRANSPORT_RETRIES
        api = with_timeouts(client.ApiClient(configuration), (1.0, 0.3))
        began = time.monotonic()
        with pytest.raises(urllib3.exceptions.HTTPError):
            api.call_api(*api.param_serialize("GET", "/api"))
        assert time.monotonic() - began < 30  # a hang guard: without a timeout, forever
        listener.setblocking(False)
        accepted = []
        with contextlib.suppress(BlockingIOError):
            while True:
                accepted.append(listener.accept()[0])
        assert len(accepted) == 1
        for conn in accepted:
            conn.close()


def status_answer(status: int, body: dict[str, object] | str) -> client.ApiException:
    exc = client.ApiException(status=status, reason="x")
    exc.body = body if isinstance(body, str) else json.dumps(body)
    return exc


# The API server's answers, as kube-apiserver 1.35 sends them.
MISSING_OBJECT = {"kind": "Status", "reason": "NotFound", "code": 404,
                  "message": 'rayservices.ray.io "ranker" not found',
                  "details": {"name": "ranker", "group": "ray.io", "kind": "rayservices"}}  # fmt: skip
NOT_SERVED = {"kind": "Status", "reason": "NotFound", "code": 404, "details": {},
              "message": "the server could not find the requested resource"}  # fmt: skip
FORBIDDEN = {"kind": "Status", "reason": "Forbidden", "code": 403,
             "message": 'rayservices.ray.io is forbidden: User "system:serviceaccount:ns:nobody" '
             'cannot list resource "rayservices" in API group "ray.io" in the namespace "ns"'}  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "error", "says"),
    [
        (status_answer(401, {"kind": "Status", "code": 401}), Unauthorized, "401 Unauthorized"),
        (status_answer(403, FORBIDDEN), Forbidden, 'cannot list resource "rayservices"'),
        (status_answer(404, NOT_SERVED), NotInstalled, "the RayService CRD (ray.io/v1) is not"),
        (status_answer(404, "404 page not found"), NotInstalled, "install the KubeRay operator"),
    ],
)
def test_access_refusals_map_to_one_error_each_naming_what_to_do(
    exc: client.ApiException, error: type[Exception], says: str
) -> None:
    assert access_refused(exc)
    script = iter([exc])

    @about(RAYSERVICE)
    def call() -> None:
        raise next(script)

    with pytest.raises(error) as raised:
        call()
    assert says in str(raised.value)
    assert "\n" not in str(raised.value)
    assert type(explained(exc)) is error


def test_a_missing_object_is_not_a_missing_crd() -> None:
    assert not access_refused(status_answer(404, MISSING_OBJECT))
    assert not not_served(status_answer(404, MISSING_OBJECT))
