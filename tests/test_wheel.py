"""The distribution is gitsync alone, and an installed gitsync knows it is not a checkout.

A real wheel, built by pip and setuptools from a copy of the repository (the build writes
build/ and *.egg-info beside its sources), installed into a scratch virtualenv. The scratch
venv borrows the test venv's third-party packages through a path entry (the same versions,
no network), but gitsync itself comes from the wheel alone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from gitsync.cli import EXIT_ERROR, source_checkout

REPO_ROOT = Path(__file__).resolve().parent.parent
# What a checkout holds that is never part of a build: caches, the venvs, the test bed.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv*", ".testbed", "build", "dist", "*.egg-info", "__pycache__", "*_cache",
    ".hypothesis", "artifacts",
)  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("wheel")
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCES)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--wheel-dir", str(out), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("gitsync-*.whl")
    return built


def install(wheel: Path, venv: Path) -> Path:
    """A fresh venv with the wheel installed; returns its bin/ folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # The dependencies, from the test venv; its editable gitsync is not seen (a path entry's
    # own .pth files are not read), so `import gitsync` finds the wheel's copy.
    (Path(site) / "test-venv-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def test_the_wheel_holds_gitsync_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"gitsync", "gitsync-0.1.0.dist-info"}, sorted(tops)
    # The package data the status page serves is in it, and every module of the package.
    assert {"gitsync/web/static/app.css", "gitsync/web/static/app.js"} <= set(names)
    assert {"gitsync/web/templates/page.html", "gitsync/web/templates/macros.html"} <= set(names)
    modules = {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "gitsync").rglob("*.py")}
    assert modules <= set(names), sorted(modules - set(names))


def test_an_installed_gitsync_demo_asks_for_a_source_checkout(wheel: Path, tmp_path: Path) -> None:
    bin_dir = install(wheel, tmp_path / "venv")
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import gitsync; print(gitsync.__file__)"],
        cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert where.startswith(str(tmp_path / "venv")), where
    help_ = subprocess.run(
        [str(bin_dir / "gitsync"), "--help"], cwd=tmp_path, capture_output=True, text=True,
        check=False, timeout=60,
    )  # fmt: skip
    assert help_.returncode == 0, help_.stderr
    assert "demo" in help_.stdout
    # From anywhere, the checkout's folder included: the installed package never runs the
    # repository's build.sh.
    for cwd in (tmp_path, REPO_ROOT):
        demo = subprocess.run(
            [str(bin_dir / "gitsync"), "demo", "--exit-after-story"], cwd=cwd,
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert demo.returncode == EXIT_ERROR, (demo.stdout, demo.stderr)
        assert demo.stderr.startswith("gitsync demo: needs a source checkout of gitsync"), (
            demo.stderr
        )
        assert "make demo" in demo.stderr
        assert demo.stdout == ""
    for package in ("testbed", "bench", "tests"):
        found = subprocess.run(
            [str(bin_dir / "python"), "-c", f"import importlib.util as u; print(u.find_spec({package!r}))"],
            cwd=tmp_path, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        assert found.strip() == "None", (package, found)


def test_gitsync_from_the_checkout_finds_it() -> None:
    """`gitsync demo` from an editable install (make venv) runs the checkout's test bed."""
    assert source_checkout() == REPO_ROOT
