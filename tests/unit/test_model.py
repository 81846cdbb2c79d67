from __future__ import annotations

import pytest

from gitsync.errors import ManifestError
from gitsync.model import ServiceKey


def test_service_key_prints_and_parses() -> None:
    key = ServiceKey("ray-prod", "ranker")
    assert str(key) == "ray-prod/ranker"
    assert ServiceKey.parse("ray-prod/ranker") == key
    assert sorted([ServiceKey("b", "a"), ServiceKey("a", "z")])[0] == ServiceKey("a", "z")


@pytest.mark.parametrize("text", ["ranker", "/ranker", "ns/", "a/b/c", ""])
def test_service_key_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError, match="namespace"):
        ServiceKey.parse(text)


def test_manifest_error_names_file_and_line() -> None:
    assert str(ManifestError("bad", file="envs/prod/a.yaml", line=12)) == "envs/prod/a.yaml:12: bad"
    assert str(ManifestError("bad", file="envs/prod/a.yaml")) == "envs/prod/a.yaml: bad"
