"""`make test`: the whole check of a commit, arranged to fit a 2-core machine, and where its
time went.

Standard library only: it runs before the venv exists. The phases:

1. ``build`` (testbed/build.sh: Go builds and Debian packages) starts at once, in the
   background; it needs only bash, go, git and python3.
2. Beside it, one after another: ``venv``, ``lint`` (ruff, and lint-imports: the import
   contracts in pyproject.toml), ``typecheck`` (mypy), ``pytest quick``: every test that
   needs no test-bed binary (``-m "not testbed and not serial"``), in one process so the
   build keeps most of the CPU, and ``min-deps``: the unit, source and report tests again
   on the oldest dependency versions pyproject.toml allows (``make test-min-deps``).
3. ``pytest testbed``: the tests that need the binaries, in parallel (pytest-xdist, one
   control plane, Gitea, simulator and operator per worker, whole files per worker so
   module fixtures are built once). The suite mostly waits on processes, not CPU. Beside
   it, ``pytest ray``: the modules marked ``ray`` (they start real Ray heads), one after
   another in a process of their own, which takes one of the workers' places.
4. ``pytest serial``: the timing- and memory-sensitive tests (``serial``: the reliability
   suite, whose recovery times, RSS bounds and floods feed docs/reliability.md), alone.

Then a table of every phase (each build step, each test directory), the 20 slowest tests,
and a check that every collected test ran in exactly one phase. Any failure anywhere makes
the exit status non-zero; the phases after a failure still run, so one run shows all of it.

Environment: ``GITSYNC_TEST_WORKERS`` (default 4) sets the parallel phase's workers;
``GITSYNC_CI_PHASES`` (comma-separated names) runs only some phases, e.g. ``quick,serial``
(``testbed`` without ``ray`` leaves the real-Ray modules out).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "tests" / "artifacts" / "ci"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
RECORD_ENV = "GITSYNC_TEST_RECORD"  # tests/conftest.py appends one JSON line per test there
DEFAULT_WORKERS = 4
SLOWEST = 20

QUICK = "not testbed and not serial"
PARALLEL = "testbed and not ray and not serial"
RAY = "ray and not serial"
SERIAL = "serial"


class Test(NamedTuple):
    phase: str
    nodeid: str
    outcome: str
    seconds: float


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    status: str = "not run"  # ok | FAILED | not run
    detail: str = ""


@dataclass
class Run:
    phases: list[Phase] = field(default_factory=list)
    wanted: frozenset[str] | None = None

    def enabled(self, name: str) -> bool:
        return self.wanted is None or name.removeprefix("pytest ") in self.wanted

    def step(self, name: str, argv: Sequence[str], **env: str) -> Phase:
        """Runs one phase in the foreground, its output on ours."""
        phase = Phase(name)
        self.phases.append(phase)
        if not self.enabled(name):
            return phase
        _banner(name)
        start = time.monotonic()
        code = subprocess.run(
            argv, cwd=REPO_ROOT, env={**os.environ, **env}, check=False
        ).returncode
        phase.seconds = time.monotonic() - start
        phase.status = "ok" if code == 0 else "FAILED"
        if code != 0:
            phase.detail = f"exit {code}"
        return phase

    def background(self, name: str, argv: Sequence[str], **env: str) -> Callable[[], Phase]:
        """Starts one phase beside the foreground, its output in a log; the returned call
        waits for it and prints the log's tail (all of it if it failed)."""
        phase = Phase(name)
        self.phases.append(phase)
        if not self.enabled(name):
            return lambda: phase
        log = ARTIFACTS / f"{name.replace(' ', '-')}.log"
        start = time.monotonic()
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

        def wait() -> Phase:
            code = process.wait()
            phase.seconds = time.monotonic() - start
            phase.status = "ok" if code == 0 else "FAILED"
            if code != 0:
                phase.detail = f"exit {code}"
            _banner(f"{name}: exit {code} after {phase.seconds:.0f} s (log: {log})")
            lines = log.read_text(errors="replace").splitlines()
            print("\n".join(lines if code != 0 else lines[-5:]), flush=True)
            return phase

        return wait

    @property
    def failed(self) -> bool:
        return any(p.status == "FAILED" for p in self.phases)


def _banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 80 - len(text)), flush=True)


class Build:
    """testbed/build.sh in the background, its output in a log (printed if it fails)."""

    def __init__(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log = ARTIFACTS / "build.log"
        self.start = time.monotonic()
        self._file = self.log.open("wb")
        self.process = subprocess.Popen(
            ["bash", str(REPO_ROOT / "testbed" / "build.sh")],
            cwd=REPO_ROOT,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        # The build's own end, not when the foreground track got round to waiting for it.
        self.ended: float | None = None
        threading.Thread(target=self._watch, name="build-watch", daemon=True).start()

    def _watch(self) -> None:
        self.process.wait()
        self.ended = time.monotonic()

    def wait(self) -> Phase:
        code = self.process.wait()
        while self.ended is None:
            time.sleep(0.05)
        self._file.close()
        phase = Phase("build", self.ended - self.start, "ok" if code == 0 else "FAILED")
        text = self.log.read_text(errors="replace")
        _banner(f"build: exit {code} after {phase.seconds:.0f} s (log: {self.log})")
        lines = text.splitlines()
        print("\n".join(lines if code != 0 else lines[-3:]), flush=True)
        if code != 0:
            phase.detail = f"exit {code}"
        return phase

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)


def _build_steps() -> list[Phase]:
    """build.sh's own record of its steps: (step, seconds), 0 when the step found its output
    cached."""
    testbed = Path(os.environ.get("TESTBED_DIR", REPO_ROOT / ".testbed"))
    try:
        rows = (testbed / "build-times.tsv").read_text().splitlines()
    except OSError:
        return []
    steps = []
    for row in rows:
        name, _, seconds = row.partition("\t")
        if seconds.isdigit():
            steps.append(
                Phase(f"  build: {name}", float(seconds), "ok", "cached" if seconds == "0" else "")
            )
    return steps


def _pytest(run: Run, name: str, marker: str, *extra: str) -> Phase:
    return _pytest_beside(run, name, marker, *extra, background=False)()


def _pytest_beside(
    run: Run, name: str, marker: str, *extra: str, background: bool = True
) -> Callable[[], Phase]:
    """One pytest phase: in the foreground, or started beside it (the returned call waits)."""
    record = ARTIFACTS / f"{name}.jsonl"
    record.unlink(missing_ok=True)
    argv = [str(VENV_BIN / "pytest"), "-m", marker, "-p", "no:cacheprovider", *extra]
    env = {RECORD_ENV: str(record)}
    if background:
        wait = run.background(f"pytest {name}", argv, **env)
    else:
        done = run.step(f"pytest {name}", argv, **env)
        wait = lambda: done  # noqa: E731 - the foreground phase has ended already

    def checked() -> Phase:
        phase = wait()
        if phase.status != "not run" and not record.exists():
            phase.status, phase.detail = "FAILED", "no test ran"
        return phase

    return checked


def _records() -> list[Test]:
    rows = []
    for path in sorted(ARTIFACTS.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            rows.append(Test(path.stem, row["nodeid"], row["outcome"], float(row["seconds"])))
    return rows


def _collected() -> list[str] | None:
    result = subprocess.run(
        [str(VENV_BIN / "pytest"), "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        return None
    return [line for line in result.stdout.splitlines() if "::" in line]


def _coverage(run: Run, rows: list[Test]) -> None:
    """Every collected test ran in exactly one phase: nothing dropped between the markers."""
    phase = Phase("every test ran once")
    run.phases.append(phase)
    if run.wanted is not None:
        return
    collected = _collected()
    if collected is None:
        phase.status, phase.detail = "FAILED", "collection failed"
        return
    seen: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        seen[row.nodeid].append(row.phase)
    missing = [n for n in collected if n not in seen]
    twice = {n: p for n, p in seen.items() if len(p) > 1}
    phase.status = "ok" if not missing and not twice else "FAILED"
    phase.detail = f"{len(collected)} collected, {len(seen)} ran"
    if missing:
        phase.detail += f", {len(missing)} never ran"
        print("tests that ran in no phase:", *missing[:50], sep="\n  ")
    if twice:
        phase.detail += f", {len(twice)} ran twice"
        print("tests that ran in two phases:", *list(twice)[:50], sep="\n  ")


def _report(run: Run, rows: list[Test], total: float) -> None:
    _banner("where the time went")
    by_dir: dict[tuple[str, str], list[float]] = defaultdict(list)
    outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        folder = row.nodeid.split("::", maxsplit=1)[0].rsplit("/", 1)[0]
        by_dir[(row.phase, folder)].append(row.seconds)
        outcomes[row.phase][row.outcome] += 1
    lines: list[tuple[str, str, str, str]] = [("phase", "wall s", "tests", "result")]
    for phase in run.phases:
        tests = ""
        key = phase.name.removeprefix("pytest ")
        if phase.name.startswith("pytest ") and key in outcomes:
            tests = ", ".join(f"{n} {o}" for o, n in sorted(outcomes[key].items()))
        result = phase.status + (f" ({phase.detail})" if phase.detail else "")
        lines.append((phase.name, f"{phase.seconds:.0f}", tests, result))
        if phase.name.startswith("pytest "):
            for (ph, folder), secs in sorted(by_dir.items()):
                if ph == key:
                    lines.append((f"  {folder}", f"({sum(secs):.0f})", f"{len(secs)} tests", ""))
    lines.append(("total", f"{total:.0f}", f"{len(rows)} tests", "FAILED" if run.failed else "ok"))
    widths = [max(len(r[i]) for r in lines) for i in range(4)]
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    print(
        "\n(a test directory's figure in parentheses is the sum of its tests' own times; "
        "in the parallel phase they overlap)"
    )
    _banner(f"the {SLOWEST} slowest tests (setup + call + teardown)")
    for row in sorted(rows, key=lambda r: -r.seconds)[:SLOWEST]:
        print(f"{row.seconds:8.1f} s  {row.phase:<8} {row.nodeid}")


def write_durations(target: Path) -> None:
    """Each module's seconds from the last run's records, into tests/durations.json: the order
    in which parallel workers take modules (longest first)."""
    modules: dict[str, float] = defaultdict(float)
    for row in _records():
        modules[row.nodeid.split("::", maxsplit=1)[0]] += row.seconds
    ordered = dict(sorted(((k, round(v, 1)) for k, v in modules.items()), key=lambda kv: -kv[1]))
    target.write_text(json.dumps(ordered, indent=1) + "\n")
    print(f"wrote {target} ({len(ordered)} modules)")


def main(argv: Sequence[str] = ()) -> int:
    if list(argv) == ["--write-durations"]:
        write_durations(REPO_ROOT / "tests" / "durations.json")
        return 0
    wanted = os.environ.get("GITSYNC_CI_PHASES")
    run = Run(wanted=frozenset(w.strip() for w in wanted.split(",")) if wanted else None)
    workers = os.environ.get("GITSYNC_TEST_WORKERS", str(DEFAULT_WORKERS))
    began = time.monotonic()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.jsonl"):
        old.unlink()
    build = Build() if run.enabled("build") else None
    if build is not None:
        # The build is the longest track and CPU-bound: what runs beside it (and everything
        # after it, which then has the machine alone) takes the CPU the compilers leave idle.
        os.nice(10)
    try:
        run.step("venv", ["make", "--no-print-directory", "venv"])
        ruff = f"{VENV_BIN}/ruff check . && {VENV_BIN}/ruff format --check ."
        lint = f"{ruff} && {VENV_BIN}/lint-imports"
        run.step("lint", ["sh", "-c", lint])
        run.step("typecheck", [str(VENV_BIN / "mypy")])
        _pytest(run, "quick", QUICK, "-p", "no:xdist")
        # The same tests on the oldest dependency versions pyproject.toml allows (its own venv).
        run.step("min-deps", ["make", "--no-print-directory", "test-min-deps"])
        if build is not None:
            run.phases.append(build.wait())
            run.phases.extend(_build_steps())
        # The modules that start real Ray heads, one after another in a process of their own
        # beside the parallel phase: a head's raylet must register within Ray's fixed 30 s,
        # which two such modules at once on a loaded 2-core machine miss.
        ray = _pytest_beside(run, "ray", RAY, "-p", "no:xdist")
        # Modules in conftest's order (longest first), not xdist's default (most tests first).
        rest = str(max(1, int(workers) - 1)) if run.enabled("ray") else workers
        _pytest(
            run, "testbed", PARALLEL, "-n", rest, "--dist", "loadfile", "--no-loadscope-reorder"
        )
        ray()
        _pytest(run, "serial", SERIAL, "-p", "no:xdist")
    finally:
        if build is not None:
            build.kill()
    rows = _records()
    _coverage(run, rows)
    _report(run, rows, time.monotonic() - began)
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
