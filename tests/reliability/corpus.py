"""Hostile and broken repositories, generated (never committed): each case writes its damage
into a copy of the valid example tree and names the problem gitsync must report.

A case's ``expect`` is a substring of the message; ``where`` is how the problem must start
(``file:line`` for manifests, ``file`` alone for what only the file system can tell). A case
with ``expect=None`` is harmless by design (a symlink loop inside the folder) and must load
the example services, each once. Run as a script, one case is probed in a fresh process (see
:mod:`tests.reliability.probe`) so its peak RSS is its own.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plain-layout"
STAGING = "environments/staging"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    write: Callable[[Path], None]  # damages a work tree holding the valid base
    expect: str | None
    where: str
    in_git: bool = True  # False: git cannot store it (only `gitsync validate PATH` sees it)


def base_tree(root: Path, namespace: str = "ray-staging") -> None:
    """The example layout with staging only, deploying into ``namespace``."""
    shutil.copytree(EXAMPLES / STAGING, root / STAGING)
    config = {"environments": [{"name": "staging", "path": STAGING, "namespace": namespace}]}
    (root / "gitsync.yaml").write_text(yaml.safe_dump(config))


def service(
    name: str, serve: str = "applications:\n  - name: app\n    import_path: m:app\n"
) -> str:
    """A minimal valid RayService; ``serve`` is its serveConfigV2."""
    block = "".join(f"    {line}\n" for line in serve.splitlines())
    return (
        f"apiVersion: ray.io/v1\nkind: RayService\nmetadata:\n  name: {name}\nspec:\n"
        f"  serveConfigV2: |\n{block}"
        "  rayClusterConfig:\n    headGroupSpec:\n      template:\n        spec:\n"
        "          containers:\n            - name: ray-head\n              image: ray:2\n"
    )


def _put(relative: str, content: str | bytes) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return write


def _link(relative: str, target: str) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        os.symlink(target, path)

    return write


def _big(
    relative: str, size: int, line: bytes = b"# padding padding padding padding\n"
) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        block = line * (MiB // len(line))
        with path.open("wb") as out:
            left = size
            while left > 0:
                out.write(block[:left])
                left -= min(left, len(block))

    return write


def _config(mutate: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    """Rewrites gitsync.yaml through ``mutate`` (given the parsed config)."""

    def write(root: Path) -> None:
        config = yaml.safe_load((root / "gitsync.yaml").read_text())
        mutate(config)
        (root / "gitsync.yaml").write_text(yaml.safe_dump(config, width=10**9))

    return write


def _env(**fields: object) -> Callable[[Path], None]:
    return _config(lambda c: c["environments"][0].update(fields))


def _both(*writes: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        for each in writes:
            each(root)

    return write


def _laughs(depth: int = 9) -> str:
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for previous, name in zip("abcdefghij", "bcdefghijk"[: depth - 1], strict=False):
        text += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
    return text


def _many_services(count: int, per_file: int) -> Callable[[Path], None]:
    def write(root: Path) -> None:
        for start in range(0, count, per_file):
            text = "".join(
                "---\n" + service(f"s{n}") for n in range(start, min(count, start + per_file))
            )
            (root / STAGING / f"many-{start:05}.yaml").write_text(text)

    return write


S = STAGING
PASSWD = "/etc/passwd"
SERVE_BOMB = _laughs().replace("\n", "\n  ").replace("a: &a", "x: &a", 1)
D = "duplicate key"
T = "unsupported YAML tag"


def _parts(count: int, size: int) -> Callable[[Path], None]:
    return _both(*(_big(f"{S}/part-{n:02}.yaml", size) for n in range(count)))


# fmt: off
# One case per line: the corpus reads as a table.
CASES: tuple[Case, ...] = (
    # -- YAML bombs ------------------------------------------------------------------------
    Case("laughs-manifest", _put(f"{S}/bomb.yaml", _laughs()), "expands to more than 100000 values", f"{S}/bomb.yaml:"),
    Case("laughs-serveconfig", _put(f"{S}/bomb.yaml", service("bomb", "applications: []\n" + _laughs())), "serveConfigV2: YAML holds or expands", f"{S}/bomb.yaml:"),
    Case("laughs-gitsync-yaml", _put("gitsync.yaml", _laughs()), "expands to more than 100000 values", "gitsync.yaml:"),
    Case("laughs-as-keys", _put(f"{S}/keys.yaml", "a: &a [x]\n? *a\n: 1\n"), "mapping keys must be strings", f"{S}/keys.yaml:"),
    Case("quadratic-aliases", _put(f"{S}/quad.yaml", "a: &a [" + ",".join(["x"] * 2000) + "]\nb: [" + ",".join(["*a"] * 2000) + "]\n"), "expands to more than 100000 values", f"{S}/quad.yaml:"),
    Case("sixty-thousand-documents", _put(f"{S}/docs.yaml", "--- {}\n" * 60_000), "more than 100 problems in environment 'staging'", f"{S}/docs.yaml:"),
    Case("two-hundred-thousand-documents", _put(f"{S}/docs.yaml", "---\n" * 200_000), "holds or expands to more than 100000 values", f"{S}/docs.yaml:"),
    # -- sizes -----------------------------------------------------------------------------
    Case("file-100mb", _big(f"{S}/huge.yaml", 100 * MiB), f"file is {100 * MiB} bytes; manifests are limited to {MiB} bytes", f"{S}/huge.yaml: "),
    Case("file-1mib-plus-one", _big(f"{S}/edge.yaml", MiB + 1), "manifests are limited to 1048576 bytes", f"{S}/edge.yaml: "),
    Case("gitsync-yaml-5mb", _big("gitsync.yaml", 5 * MiB), "it is limited to 1048576", "gitsync.yaml: "),
    Case("tree-40mb", _parts(40, MiB - 4096), "manifests add up to more than 33554432 bytes", f"{S}/part-"),
    Case("serveconfig-5mb", _put(f"{S}/big.yaml", service("big", "applications: []\n# " + "x" * (5 * MiB) + "\n")), "manifests are limited to 1048576 bytes", f"{S}/big.yaml: "),
    Case("serveconfig-150k-values", _put(f"{S}/wide.yaml", service("wide", "applications: [" + "1," * 150_000 + "]")), "serveConfigV2: YAML holds or expands", f"{S}/wide.yaml:"),
    Case("flow-list-500k-values", _put(f"{S}/flat.yaml", "[" + "1," * 500_000 + "]\n"), "holds or expands to more than 100000 values", f"{S}/flat.yaml:1"),
    Case("ten-thousand-services", _many_services(10_000, 500), "declares more than 2000 objects", f"{S}/many-"),
    # -- nesting ---------------------------------------------------------------------------
    Case("deep-block-10000", _put(f"{S}/deep.yaml", "- " * 10_000 + "x\n"), "exceeded maximum nesting depth", f"{S}/deep.yaml:"),
    Case("deep-flow-10000", _put(f"{S}/deep.yaml", "a: " + "[" * 10_000 + "]" * 10_000 + "\n"), "exceeded maximum nesting depth", f"{S}/deep.yaml:1"),
    Case("deep-flow-map-10000", _put(f"{S}/deep.yaml", "a: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n"), "exceeded maximum nesting depth", f"{S}/deep.yaml:1"),
    Case("deep-500", _put(f"{S}/deep.yaml", "a: " + "[" * 500 + "]" * 500 + "\n"), "nested more than 100 levels deep", f"{S}/deep.yaml:1"),
    Case("deep-in-serveconfig", _put(f"{S}/deep.yaml", service("deep", "applications: " + "[" * 300 + "]" * 300)), "serveConfigV2: values are nested more than 100", f"{S}/deep.yaml:"),
    # -- symlinks ---------------------------------------------------------------------------
    Case("symlink-etc-passwd", _link(f"{S}/passwd.yaml", PASSWD), f"symlink points outside the repository (to {PASSWD})", f"{S}/passwd.yaml: "),
    Case("symlink-relative-escape", _link(f"{S}/up.yaml", "../../../../../../etc/hostname"), "symlink points outside the repository", f"{S}/up.yaml: "),
    Case("symlink-dev-zero", _link(f"{S}/zero.yaml", "/dev/zero"), "symlink points outside the repository (to /dev/zero)", f"{S}/zero.yaml: "),
    Case("symlink-proc-self", _link(f"{S}/environ.yaml", "/proc/self/environ"), "symlink points outside the repository", f"{S}/environ.yaml: "),
    Case("symlink-other-folder", _both(_put("shared/svc.yaml", service("shared")), _link(f"{S}/svc.yaml", "../../shared/svc.yaml")), "symlink leaves the environment folder", f"{S}/svc.yaml: "),
    Case("symlink-dir-out", _link(f"{S}/etc", "/etc"), "symlink points outside the repository (to /etc)", f"{S}/etc: "),
    Case("symlink-self-loop", _link(f"{S}/self.yaml", "self.yaml"), "symlink is broken or loops", f"{S}/self.yaml: "),
    Case("symlink-broken", _link(f"{S}/gone.yaml", "nothing-here.yaml"), "symlink is broken or loops (to nothing-here.yaml)", f"{S}/gone.yaml: "),
    Case("symlink-pair-loop", _both(_link(f"{S}/a.yaml", "b.yaml"), _link(f"{S}/b.yaml", "a.yaml")), "symlink is broken or loops", f"{S}/a.yaml: "),
    Case("symlink-dir-loop", _both(_link(f"{S}/again", "."), _link(f"{S}/sub/up", "..")), None, ""),
    Case("env-folder-symlink-out", _both(lambda root: shutil.rmtree(root / S), _link(S, "/etc")), "is a symlink out of the repository", "gitsync.yaml:"),
    Case("gitsync-yaml-symlink", _link("gitsync.yaml", PASSWD), f"is a symlink (to {PASSWD}); it must be a regular file", "gitsync.yaml: "),
    # -- paths in gitsync.yaml --------------------------------------------------------------
    Case("path-dotdot", _env(path="../../x"), "must be relative and stay inside the repository", "gitsync.yaml:"),
    Case("path-absolute", _env(path="/etc"), "must be relative and stay inside the repository", "gitsync.yaml:"),
    Case("path-sneaky-dotdot", _env(path="environments/../../../etc"), "must be relative and stay inside", "gitsync.yaml:"),
    Case("path-nul", _env(path="environments/st\0aging"), "must not contain control characters", "gitsync.yaml:"),
    Case("path-newline", _env(path="environments/\nstaging"), "must not contain control characters", "gitsync.yaml:"),
    Case("path-5000-chars", _env(path="a/" * 2500), "paths are limited to 1024", "gitsync.yaml:"),
    Case("path-long-component", _env(path="x" * 300), "at most 255 per folder name", "gitsync.yaml:"),
    Case("path-missing", _env(path="environments/nowhere"), "is not a folder in this revision", "gitsync.yaml:"),
    Case("path-is-a-file", _env(path="gitsync.yaml"), "is not a folder in this revision", "gitsync.yaml:"),
    # -- encodings --------------------------------------------------------------------------
    Case("nul-bytes", _put(f"{S}/nul.yaml", service("nul").replace("ray:2", "ray\0:2")), "unacceptable character #x0000: control characters are not allowed", f"{S}/nul.yaml:16"),
    Case("invalid-utf8", _put(f"{S}/bad.yaml", service("bad").encode() + b"# \xff\xfe\n"), "not UTF-8 text (byte 0xff)", f"{S}/bad.yaml:17"),
    Case("utf16", _put(f"{S}/wide.yaml", service("wide").encode("utf-16")), "not UTF-8 text", f"{S}/wide.yaml:1"),
    Case("invalid-utf8-gitsync-yaml", _put("gitsync.yaml", b"environments: \xc3\x28\n"), "not UTF-8 text (byte 0xc3)", "gitsync.yaml:1"),
    Case("binary-garbage", _put(f"{S}/garbage.yaml", bytes(range(256)) * 64), "not UTF-8 text", f"{S}/garbage.yaml:"),
    # -- shapes ------------------------------------------------------------------------------
    Case("duplicate-key", _put(f"{S}/dup.yaml", service("dup").replace("spec:\n", "metadata: {}\nspec:\n", 1)), f"{D} 'metadata'", f"{S}/dup.yaml:5"),
    Case("duplicate-key-serveconfig", _put(f"{S}/dup.yaml", service("dup", "applications: []\napplications: []\n")), f"serveConfigV2: {D} 'applications'", f"{S}/dup.yaml:8"),
    Case("duplicate-service", _put(f"{S}/again.yaml", service("ranker")), "/ranker is declared twice in environment", f"{S}/"),
    Case("document-is-list", _put(f"{S}/list.yaml", "- a\n- b\n"), "a manifest must be a mapping with apiVersion and kind, not a list", f"{S}/list.yaml:1"),
    Case("document-is-string", _put(f"{S}/str.yaml", "just text\n"), "not a str", f"{S}/str.yaml:1"),
    Case("document-is-number", _put(f"{S}/num.yaml", "--- 42\n"), "not a int", f"{S}/num.yaml:1"),
    Case("gitsync-yaml-is-list", _put("gitsync.yaml", "- staging\n"), "the file must be a mapping", "gitsync.yaml:1"),
    Case("gitsync-yaml-two-documents", _put("gitsync.yaml", "environments: []\n---\nenvironments: []\n"), "must hold exactly one YAML document", "gitsync.yaml:1"),
    Case("serveconfig-two-documents", _put(f"{S}/two.yaml", service("two", "applications: []\n---\napplications: []\n")), "serveConfigV2 must be one YAML mapping", f"{S}/two.yaml:"),
    Case("documents-mixed", _put(f"{S}/mixed.yaml", service("mixed") + "---\n- x\n---\n...\n--- !!str\n"), "not a list", f"{S}/mixed.yaml:18"),
    # -- wrong types in gitsync.yaml ----------------------------------------------------------
    Case("config-name-int", _env(name=5), "environment name must be a string, not a int", "gitsync.yaml:"),
    Case("config-environments-mapping", _config(lambda c: c.update(environments={"a": "b"})), "environments must be a non-empty list", "gitsync.yaml:1"),
    Case("config-namespace-list", _env(namespace=["a"]), "namespace must be a string, not a list", "gitsync.yaml:"),
    Case("config-prune-string", _env(prune="yes"), "prune must be true or false", "gitsync.yaml:"),
    Case("config-after-int", _env(after=3), "after must be a list of environment names", "gitsync.yaml:"),
    Case("config-path-mapping", _env(path={"a": 1}), "path must be a string", "gitsync.yaml:"),
    Case("config-ttl-list", _config(lambda c: c.update(previews={"from": "staging", "namespace": "p", "ttl": [1]})), "previews.ttl must be a duration", "gitsync.yaml:"),
    Case("config-kinds-string", _config(lambda c: c.update(allowedKinds="ConfigMap")), "allowedKinds must be a list", "gitsync.yaml:"),
    Case("config-10000-environments", _config(lambda c: c.update(environments=[{"name": f"e{n}", "path": S, "namespace": f"n{n}"} for n in range(10_000)])), "10000 environments are declared; the limit is 100", "gitsync.yaml:"),
    # -- tags ---------------------------------------------------------------------------------
    Case("python-object-apply", _put(f"{S}/py.yaml", '!!python/object/apply:os.system ["touch /tmp/pwned"]\n'), T, f"{S}/py.yaml:1"),
    Case("python-name", _put(f"{S}/py.yaml", service("py").replace("image: ray:2", "image: !!python/name:os.system")), T, f"{S}/py.yaml:"),
    Case("python-in-serveconfig", _put(f"{S}/py.yaml", service("py", "applications: !!python/object:x.Y {}\n")), f"serveConfigV2: {T}", f"{S}/py.yaml:"),
    Case("binary-tag", _put(f"{S}/bin.yaml", service("bin").replace("image: ray:2", "image: !!binary aGVsbG8=")), T, f"{S}/bin.yaml:"),
    Case("set-tag", _put(f"{S}/set.yaml", "!!set {a, b}\n"), T, f"{S}/set.yaml:1"),
    Case("custom-tag", _put(f"{S}/ref.yaml", service("ref").replace("image: ray:2", "image: !Ref Image")), T, f"{S}/ref.yaml:"),
    Case("nan-value", _put(f"{S}/nan.yaml", service("nan").replace("image: ray:2", "image: ray:2\n              ports: [{containerPort: .nan}]")), "is not a finite number", f"{S}/nan.yaml:"),
    # -- names ---------------------------------------------------------------------------------
    Case("name-100k-chars", _put(f"{S}/long.yaml", service("a" * 100_000)), "characters]…", f"{S}/long.yaml:4"),
    Case("key-100k-chars", _put(f"{S}/long.yaml", service("long").replace("spec:\n", f"spec:\n  ? {'k' * 100_000}\n  : 1\n", 1)), "unknown field spec.", f"{S}/long.yaml:"),
    Case("file-name-with-newline", _put(f"{S}/evil\nname.yaml", "- x\n"), "not a list", f"{S}/evil\\nname.yaml:1"),
    Case("namespace-kube-system", _put(f"{S}/ns.yaml", service("ns").replace("name: ns", "name: ns\n  namespace: kube-system")), "conflicts with environment 'staging'", f"{S}/ns.yaml:"),
    Case("reserved-label", _put(f"{S}/lbl.yaml", service("lbl").replace("name: lbl", "name: lbl\n  labels: {app.kubernetes.io/managed-by: me}")), "is set by gitsync when it applies", f"{S}/lbl.yaml:"),
)
# fmt: on

BY_NAME = {case.name: case for case in CASES}
