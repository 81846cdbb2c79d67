"""The status page in headless Chromium, against the real API server, the KubeRay simulator,
a Git repository and an Agent with its HTTP server: a two-wave rollout with cluster swaps
watched live, a failed rollout, and a commit message carrying a script; and the JSON API's
answers checked against its OpenAPI document (no browser).

Chromium and chromedriver are Debian's (``testbed/build.sh`` installs them). A test that
cannot start them fails; it never skips. Screenshots go to ``tests/artifacts/web/`` (ignored
by Git; ``GITSYNC_TEST_ARTIFACTS`` moves it).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from gitsync.agent import Agent
from gitsync.config import LeaderElection
from gitsync.metrics import Metrics
from gitsync.server import AgentServer, Hooks
from gitsync.web.openapi import OPENAPI_PATH, ROUTES
from gitsync.web.site import StatusSite
from testbed.controlplane import free_port
from testbed.simulator import Delays, FailureRule, Simulator
from tests.integration.gitops import GitOpsRepo

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = (
    Path(
        os.environ.get("GITSYNC_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts")
    )
    / "web"
)
# Without the background-networking flags Chromium hangs on a closed network.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: run testbed/build.sh (installs Debian's chromium)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    with tempfile.TemporaryDirectory(prefix="gitsync-chromium-") as profile:
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        try:
            driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        except WebDriverException as exc:
            pytest.fail(f"headless Chromium did not start: {exc.msg}")
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()


def shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    sys.stderr.write(f"screenshot: {path}\n")


def text(driver: WebDriver) -> str:
    return str(driver.find_element(By.TAG_NAME, "main").text)


def see(driver: WebDriver, predicate: Callable[[str], bool], what: str, timeout: float = 60) -> str:
    """Waits, without reloading, until the page (refreshing itself) shows ``what``."""
    seen: list[str] = [""]

    def check(d: WebDriver) -> bool:
        try:
            seen[0] = text(d)
        except WebDriverException:  # <main> swapped mid-read
            return False
        return predicate(seen[0])

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.1).until(check)
    except Exception as exc:
        raise AssertionError(f"the page never showed {what}; it showed:\n{seen[0]}") from exc
    return seen[0]


def no_csp_violations(driver: WebDriver) -> None:
    logs = driver.get_log("browser")  # type: ignore[attr-defined]  # Chrome's WebDriver has it
    assert not [e for e in logs if "Content Security Policy" in e["message"]], logs


class Running:
    def __init__(self, agent: Agent, server: AgentServer, repo: GitOpsRepo) -> None:
        self.agent, self.server, self.repo = agent, server, repo

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"

    def settle(self, passes: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.agent.passes < passes or self.agent._lock.locked():
            assert time.monotonic() < deadline, f"pass {passes} did not finish"
            time.sleep(0.05)


@pytest.fixture
def slow(sim: Simulator) -> Simulator:
    """Clusters take 4 s to start, long enough to watch a swap. The simulator reads its delays
    when it first sees a RayService: request this before ``running``."""
    sim.delays = Delays(cluster_start=4.0, app_deploy=1.0, tick=0.05, requeue=1.0)
    return sim


@pytest.fixture
def running(
    api: client.ApiClient, sim: Simulator, namespace: str, tmp_path: Path
) -> Iterator[Running]:
    repo = GitOpsRepo(tmp_path / "gitops", namespace)
    config = replace(
        repo.agent_config(tmp_path / "cache", health_timeout=60.0),
        poll_seconds=3600.0,  # passes run at the start and when the test triggers them
        leader_election=LeaderElection(enabled=False),
    )
    agent = Agent(config, api, "browser-test", metrics=Metrics())
    site = StatusSite(agent.services, agent.state, config.ui, None, loopback=True)
    hooks = Hooks(
        lambda: None,
        repo.url,
        "main",
        agent.trigger,
        lambda: None,
        lambda: True,
        agent.ready.is_set,
    )
    server = AgentServer("127.0.0.1", free_port(), hooks, agent.metrics, site).start()
    agent.start()
    try:
        yield Running(agent, server, repo)
    finally:
        agent.shutdown(timeout=10)
        server.stop()


def test_a_two_wave_rollout_with_cluster_swaps_live(
    slow: Simulator, running: Running, browser: WebDriver
) -> None:
    running.settle(1)
    assert running.agent.last_ok
    browser.get(running.url("/"))
    overview = see(browser, lambda t: "3/3 Healthy" in t and "idle" in t, "staging idle, Healthy")
    assert "initial" in overview  # the applied commit's message
    shot(browser, "01-overview-initial")
    # A new image for wave 0 (embedder) and wave 1 (ranker): a cluster swap in each wave.
    repo = running.repo

    def new_image(root: Path) -> None:
        for name in ("embedder.yaml", "ranker.yaml"):
            repo.edit(name, "rayproject/ray:2.49.0-py311", "rayproject/ray:2.50.0-py311")

    revision = repo.commit(
        new_image,
        "Ray 2.50.0 for the embedder and the ranker",
    )
    browser.get(running.url("/environments/staging"))
    running.agent.trigger()
    page = see(browser, lambda t: "wave 1 of 2" in t, "wave 1 of 2")
    assert f"rolling out {revision[:12]}" in page
    pending = WebDriverWait(browser, 30, poll_frequency=0.1).until(
        lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".pending-cluster") if e.text]
    )
    assert re.fullmatch(r"embedder-[a-z0-9]{5}", pending[0]), pending
    active = browser.find_element(
        By.CSS_SELECTOR, 'tr[data-service="embedder"] .active-cluster'
    ).text
    assert active != pending[0]
    shot(browser, "02-environment-wave-1-pending-cluster")
    see(browser, lambda t: "wave 2 of 2" in t, "wave 2 of 2", timeout=60)
    pending = WebDriverWait(browser, 30, poll_frequency=0.1).until(
        lambda d: [
            e.text
            for e in d.find_elements(By.CSS_SELECTOR, 'tr[data-service="ranker"] .pending-cluster')
            if e.text
        ]
    )
    assert re.fullmatch(r"ranker-[a-z0-9]{5}", pending[0]), pending
    shot(browser, "03-environment-wave-2-pending-cluster")
    page = see(
        browser, lambda t: "3/3 Healthy" in t and "idle" in t, "Healthy after the swaps", timeout=90
    )
    assert revision[:12] in page
    assert not browser.find_elements(By.CSS_SELECTOR, ".pending-cluster")
    assert "cluster-swap" in page  # each service's last action
    shot(browser, "04-environment-healthy")
    browser.get(running.url("/environments/staging/rollout"))
    rollout = text(browser)
    assert "Ray 2.50.0 for the embedder and the ranker" in rollout
    for expected in ("cluster-swap", "2.49.0-py311", "2.50.0-py311", "wave 1 of 2: applying",
                     "wave 2 of 2: waiting to be Healthy", "Healthy", "total"):  # fmt: skip
        assert expected in rollout, expected
    shot(browser, "05-rollout-diff-and-timeline")
    no_csp_violations(browser)


def test_a_failed_rollout_names_the_app_and_kuberays_message(
    running: Running, browser: WebDriver, sim: Simulator, namespace: str
) -> None:
    running.settle(1)
    why = "ModuleNotFoundError: No module named 'ranker_v2'"
    sim.add_rule(FailureRule(message=why, namespace=namespace, import_path="ranker_v2.serve:app"))
    repo = running.repo
    repo.commit(
        lambda root: repo.edit("ranker.yaml", "ranker.serve:app", "ranker_v2.serve:app"),
        "ranker v2",
    )
    browser.get(running.url("/environments/staging"))
    running.agent.trigger()
    # The page reads the rollout's record and the live services each through a 2 s cache of
    # its own, so one refresh can show the failure before the live status that caused it.
    page = see(
        browser,
        lambda t: "failed at ranker" in t and "DEPLOY_FAILED" in t and "Degraded" in t,
        "failed at ranker, DEPLOY_FAILED and Degraded",
        timeout=90,
    )
    failing = browser.find_element(
        By.CSS_SELECTOR, 'tr[data-service="ranker"] li.app[data-app="rank"]'
    )
    assert "DEPLOY_FAILED" in failing.text
    assert why in failing.text
    assert "Degraded" in page
    shot(browser, "06-environment-failed")
    browser.get(running.url("/environments/staging/rollout"))
    rollout = text(browser)
    assert f"{namespace}/ranker" in browser.find_element(By.CSS_SELECTOR, ".failed-service").text
    assert "app rank is DEPLOY_FAILED" in rollout
    assert why in rollout
    assert "ranker.serve:app" in rollout  # the diff, old → new
    assert "ranker_v2.serve:app" in rollout
    shot(browser, "07-rollout-failed")
    browser.get(running.url("/"))
    assert "failed at ranker" in text(browser)
    with urllib.request.urlopen(running.url("/api/v1/environments/staging/rollout")) as answer:  # noqa: S310 - loopback
        rollout_json = json.load(answer)
    assert rollout_json["outcome"] == "failed"
    assert rollout_json["failed_service"] == f"{namespace}/ranker"
    assert rollout_json["changes"][0]["action"] == "serve-update"
    no_csp_violations(browser)


def test_a_script_in_a_commit_message_is_text(running: Running, browser: WebDriver) -> None:
    running.settle(1)
    message = '<script>window.pwned = 1; alert("pwned")</script> scale <b>ranker</b> & co'
    repo = running.repo
    repo.commit(
        lambda root: repo.edit("ranker.yaml", "num_replicas: 1", "num_replicas: 2"), message
    )
    running.agent.trigger()
    running.settle(2)
    for path in ("/", "/environments/staging", "/environments/staging/rollout"):
        browser.get(running.url(path))
        page = see(browser, lambda t: message in t, f"the literal message on {path}")
        assert message in page
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - reading it is the check
        assert browser.execute_script("return window.pwned === undefined") is True
        assert not browser.find_elements(By.CSS_SELECTOR, "main script, main b")
    shot(browser, "08-script-in-commit-message")
    time.sleep(2.5)  # let the page refresh itself once: the swapped-in <main> stays inert
    assert browser.execute_script("return window.pwned === undefined") is True
    no_csp_violations(browser)


def api(running: Running, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(running.url(path), timeout=10) as answer:  # noqa: S310 - loopback
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_api_answers_as_its_openapi_document_says(slow: Simulator, running: Running) -> None:
    """/api/v1/openapi.json names every route of the API and no other is served; the API's
    real answers (idle, in the middle of a rollout, after it, refusals) each validate against
    the schema the document gives for their status."""
    from jsonschema import Draft202012Validator  # noqa: PLC0415 - the test extra, here only

    running.settle(1)
    status, document = api(running, OPENAPI_PATH)
    assert status == 200
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]) == {route for route, *_ in ROUTES} | {OPENAPI_PATH}
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    checked: Counter[tuple[str, int]] = Counter()

    def check(route: str, path: str, *, expect: int = 200) -> Any:
        status, answer = api(running, path)
        assert status == expect, (path, answer)
        responses = document["paths"][route]["get"]["responses"]
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        Draft202012Validator({**schema, "components": document["components"]}).validate(answer)
        checked[route, status] += 1
        return answer

    def every_route() -> None:
        check("/api/v1/environments", "/api/v1/environments")
        check("/api/v1/environments", "/api/v1/environments/")
        check("/api/v1/environments/{name}", "/api/v1/environments/staging")
        check("/api/v1/environments/{name}/rollout", "/api/v1/environments/staging/rollout/")
        check("/api/v1/previews", "/api/v1/previews")

    every_route()
    check("/api/v1/environments/{name}", "/api/v1/environments/nope", expect=404)
    check("/api/v1/environments/{name}/rollout", "/api/v1/environments/no%2Fpe/rollout",
          expect=404)  # fmt: skip
    for undeclared in ("/api/v1/", "/api/v1/environments/staging/history", "/api/v1/nothing",
                       "/api/v1/environments/staging/rollout/x", "/api/v1/openapi.yaml"):  # fmt: skip
        assert api(running, undeclared) == (404, {"error": "not found"}), undeclared
    repo = running.repo

    def new_image(root: Path) -> None:  # a cluster swap: pending clusters and apps to show
        repo.edit("ranker.yaml", "rayproject/ray:2.49.0-py311", "rayproject/ray:2.50.0-py311")

    repo.commit(new_image, "Ray 2.50.0 for the ranker")
    running.agent.trigger()
    deadline = time.monotonic() + 90
    in_progress = 0
    while running.agent.passes < 2 or running.agent._lock.locked():
        assert time.monotonic() < deadline, "the rollout did not finish"
        every_route()
        overview = check("/api/v1/environments", "/api/v1/environments")
        in_progress += overview["in_progress"]
        time.sleep(0.05)
    assert in_progress > 0  # answers in the middle of the rollout were among those checked
    running.settle(2)
    while (rollout := check("/api/v1/environments/{name}/rollout",
                            "/api/v1/environments/staging/rollout"))["in_progress"]:  # fmt: skip
        assert time.monotonic() < deadline, rollout  # the page reads at most every 2 s
        time.sleep(0.1)
    every_route()
    assert rollout["outcome"] == "succeeded", rollout
    assert rollout["timeline"]
    assert rollout["changes"]
    environment = check("/api/v1/environments/{name}", "/api/v1/environments/staging")
    assert environment["history"]
    assert environment["waves"][0]["services"]
    assert checked["/api/v1/environments/{name}/rollout", 200] > 2
