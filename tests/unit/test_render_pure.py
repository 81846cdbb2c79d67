"""The pure half of rendering (gitsync.manifests.render) and the sources in gitsync.yaml:
what is refused before a tool runs, messages cleaned of local paths, and rendered documents
placed at their origin file, line, and patch."""

from __future__ import annotations

import pytest

from gitsync.manifests.render import (
    ImageSite,
    clean_message,
    helm_documents,
    kustomize_documents,
    parse_stream,
    patch_site,
    read_kustomization,
    resolve,
    split_image,
)
from gitsync.manifests.repoconfig import HelmSource, load_repo_config
from gitsync.manifests.yamldoc import parse_documents

ENV = "environments:\n  - name: staging\n    path: env\n    namespace: ray\n"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", ("auto", None, False, 60.0)),
        ("    render: kustomize\n", ("kustomize", None, False, 60.0)),
        ("    allowRemote: true\n    renderTimeout: 5s\n", ("auto", None, True, 5.0)),
        (
            "    helm: {chart: charts/ray, values: [env/values.yaml], releaseName: ray}\n",
            ("helm", HelmSource("charts/ray", ("env/values.yaml",), "ray"), False, 60.0),
        ),
    ],
)
def test_sources_in_gitsync_yaml(extra: str, expected: tuple[object, ...]) -> None:
    config, problems = load_repo_config(ENV + extra)
    assert config is not None, problems
    source = config.environments[0].source
    assert (source.renderer, source.helm, source.allow_remote, source.timeout) == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    render: jsonnet\n", "5: render must be one of auto, plain, kustomize, helm"),
        ("    helm: {chart: oci://example.com/ray}\n", "5: helm.chart 'oci://example.com/ray' is"),
        ("    helm: {chart: ../outside}\n", "must be relative and stay inside the repository"),
        ("    helm: {chart: c, values: [../../etc/x]}\n", "must be relative and stay inside"),
        ("    render: helm\n", "render: helm needs helm:"),
        ("    render: plain\n    helm: {chart: c}\n", "helm is set, so render must be helm"),
        ("    renderTimeout: 2h\n", "renderTimeout must be a duration up to 600s"),
        ("    allowRemote: yes please\n", "allowRemote must be true or false"),
    ],
)
def test_bad_sources_are_problems_at_their_line(extra: str, message: str) -> None:
    config, problems = load_repo_config(ENV + extra)
    assert config is None
    assert any(message in str(p) for p in problems), problems


@pytest.mark.parametrize(
    ("folder", "written", "expected"),
    [
        ("overlays/prod", "../../base", "base"),
        ("overlays/prod", "patch.yaml", "overlays/prod/patch.yaml"),
        ("overlays/prod", "../../../etc", None),
        ("overlays/prod", "/etc/passwd", None),
        ("", ".", ""),
    ],
)
def test_resolve(folder: str, written: str, expected: str | None) -> None:
    assert resolve(folder, written) == expected


def test_a_kustomization_refuses_remote_escaping_and_helm_inputs_at_their_line() -> None:
    text = (
        "resources:\n  - ../../base\n  - https://github.com/org/repo//base?ref=v1\n"
        "  - github.com/org/repo/base\n  - ../../../outside\n"
        "patches:\n  - path: scale.yaml\n    target: {kind: RayService, name: ranker}\n"
        "helmCharts:\n  - name: x\n"
    )
    found = read_kustomization(text, "overlays/prod/kustomization.yaml")
    shown = [str(p) for p in found.problems]
    assert [s.split(": ", 1)[0] for s in shown] == [
        "overlays/prod/kustomization.yaml:3",
        "overlays/prod/kustomization.yaml:4",
        "overlays/prod/kustomization.yaml:5",
        "overlays/prod/kustomization.yaml:9",
    ]
    assert "is remote; rendering has no network" in shown[0]
    assert "is outside the repository" in shown[2]
    assert [r.path for r in found.references] == ["base", "overlays/prod/scale.yaml"]
    [(patch, kind, name)] = found.patches
    assert (patch.path, kind, name) == ("overlays/prod/scale.yaml", "RayService", "ranker")
    allowed = read_kustomization(text, "overlays/prod/kustomization.yaml", allow_remote=True)
    assert len(allowed.problems) == 2  # the escape and helmCharts remain


def test_messages_lose_the_temporary_folder_and_every_other_absolute_path() -> None:
    message = (
        "Error: accumulating resources: '/var/cache/gitsync-render-x1/repo/base' "
        "and /home/agent/.cache/kustomize: must build at directory /etc"
    )
    cleaned = clean_message(message, "/var/cache/gitsync-render-x1/repo")
    assert cleaned == (
        "Error: accumulating resources: 'base' and <outside the repository>: must build at "
        "directory <outside the repository>"
    )


BASE = """# the ranker
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: ranker
spec:
  rayClusterConfig:
    workerGroupSpecs:
      - groupName: cpu
        replicas: 1
"""
PATCH = """- op: replace
  path: /spec/rayClusterConfig/workerGroupSpecs/0/replicas
  value: 30
"""
RENDERED = """apiVersion: ray.io/v1
kind: RayService
metadata:
  name: prod-ranker
spec:
  rayClusterConfig:
    workerGroupSpecs:
    - groupName: cpu
      replicas: 30
"""


def test_rendered_documents_are_read_at_their_origin_and_patch() -> None:
    sites = patch_site("overlays/prod/scale.yaml", PATCH, "RayService", "ranker")
    [doc], problems = kustomize_documents(
        RENDERED,
        "overlays/prod",
        {"base/ranker.yaml": BASE},
        ["base/ranker.yaml"],
        sites,
    )
    assert problems == []
    assert (doc.file, doc.line) == ("base/ranker.yaml", 2)
    group = ("spec", "rayClusterConfig", "workerGroupSpecs", 0)
    assert str(doc.problem("bad", *group, "replicas")) == "overlays/prod/scale.yaml:3: bad"
    assert str(doc.problem("bad", *group, "groupName")) == "base/ranker.yaml:9: bad"


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("rayproject/ray", ("rayproject/ray", None, None)),
        ("rayproject/ray:2.49.1-py311", ("rayproject/ray", "2.49.1-py311", None)),
        ("registry:5000/ray/ray:1@sha256:ab", ("registry:5000/ray/ray", "1", "sha256:ab")),
        ("registry:5000/ray", ("registry:5000/ray", None, None)),
    ],
)
def test_split_image(image: str, expected: tuple[str, str | None, str | None]) -> None:
    assert split_image(image) == expected


KUSTOMIZATION = """resources:
  - ../../base
images:
  - name: rayproject/ray
    newTag: 2.49.1-py311
  - name: rayproject/ray-ml
    newName: registry.example.com/ray-ml
  - name: unchanged/by-this
"""


def test_images_entries_are_read_at_their_line_and_place_the_images_they_wrote() -> None:
    found = read_kustomization(KUSTOMIZATION, "overlays/prod/kustomization.yaml")
    tag, name, empty = found.images
    assert (tag.line, tag.name, tag.new_tag) == (4, "rayproject/ray", "2.49.1-py311")
    assert (name.line, name.new_name) == (6, "registry.example.com/ray-ml")
    assert tag.wrote("rayproject/ray:2.49.1-py311")
    assert not tag.wrote("rayproject/ray:2.49.0-py311")  # a patch's, or the base's
    assert not tag.wrote("rayproject/ray-ml:2.49.1-py311")  # another image
    assert name.wrote("registry.example.com/ray-ml:2.49.0-gpu")
    assert not empty.wrote("unchanged/by-this:1")  # an entry that sets nothing
    base = BASE.replace(
        "        replicas: 1\n", "        replicas: 1\n        image: rayproject/ray:2.49.0\n"
    )
    rendered = RENDERED + "      image: rayproject/ray:2.49.1-py311\n"
    [doc], _ = kustomize_documents(
        rendered, "overlays/prod", {"base/ranker.yaml": base}, ["base/ranker.yaml"],
        patch_site("overlays/prod/scale.yaml", PATCH, "RayService", "ranker"), found.images,
    )  # fmt: skip
    group = ("spec", "rayClusterConfig", "workerGroupSpecs", 0)
    assert str(doc.problem("bad", *group, "image")) == "overlays/prod/kustomization.yaml:4: bad"
    assert str(doc.problem("bad", *group, "replicas")) == "overlays/prod/scale.yaml:3: bad"
    assert str(doc.problem("bad", *group, "groupName")) == "base/ranker.yaml:9: bad"
    assert ImageSite("k.yaml", 1, "a", new_tag="2").wrote("a:2")


def test_kustomize_origin_annotations_are_used_and_removed() -> None:
    annotated = RENDERED.replace(
        "  name: prod-ranker\n",
        "  name: prod-ranker\n  annotations:\n    config.kubernetes.io/origin: |\n"
        "      path: ../../base/ranker.yaml\n",
    )
    [doc], _ = kustomize_documents(annotated, "overlays/prod", {"base/ranker.yaml": BASE}, [])
    assert (doc.file, doc.line) == ("base/ranker.yaml", 2)
    assert "annotations" not in doc.data["metadata"]


def test_helm_documents_are_read_at_their_template() -> None:
    template = "apiVersion: ray.io/v1\nkind: RayService\nmetadata:\n  name: {{ .name }}\n"
    output = "---\n# Source: ray/templates/rs.yaml\napiVersion: ray.io/v1\nkind: RayService\n"
    output += "metadata:\n  name: ranker\n"
    [doc], _ = helm_documents(output, "charts/ray", {"charts/ray/templates/rs.yaml": template})
    assert doc.file == "charts/ray/templates/rs.yaml"
    assert str(doc.problem("bad", "metadata", "name")) == "charts/ray/templates/rs.yaml:4: bad"


def test_rendered_output_is_parsed_one_document_at_a_time_with_its_lines() -> None:
    one = "apiVersion: v1\nkind: ConfigMap\ndata:\n" + "".join(f"  k{i}: v\n" for i in range(60))
    output = "---\n".join([one] * 1000)  # 64,000 values: more than one file may hold
    assert parse_documents(output, "out")[1]  # as one file: refused
    documents, problems = parse_stream(output, "out")
    assert problems == []
    assert len(documents) == 1000
    assert documents[-1].line_of("data", "k0") == 999 * 64 + 4
