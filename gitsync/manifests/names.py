"""Kubernetes and KubeRay name rules, as predicates with messages a person can act on."""

from __future__ import annotations

import re

from gitsync import kuberay

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def _not_a_string(what: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return None
    return f"{what} must be a string, not a {type(value).__name__}"


def rayservice_name_problem(name: object) -> str | None:
    """``ValidateRayServiceMetadata``: a DNS-1035 label of at most 47 characters (the cluster
    name adds ``-xxxxx`` and the serve Service ``-serve-svc``, within 63)."""
    if wrong := _not_a_string("metadata.name", name):
        return wrong
    if not isinstance(name, str) or not name:
        return "metadata.name is required (a lowercase DNS-1035 label, at most 47 characters)"
    if len(name) > kuberay.MAX_RAYSERVICE_NAME_LENGTH:
        return (
            f"metadata.name {name!r} is {len(name)} characters; KubeRay allows at most "
            f"{kuberay.MAX_RAYSERVICE_NAME_LENGTH} for a RayService"
        )
    if not _DNS1035.match(name):
        return (
            f"metadata.name {name!r} is not a DNS-1035 label: lowercase letters, digits and "
            "'-', starting with a letter and ending with a letter or digit"
        )
    return None


def namespace_problem(name: object) -> str | None:
    if wrong := _not_a_string("namespace", name):
        return wrong
    if not isinstance(name, str) or not name:
        return "namespace is required"
    if len(name) > 63 or not _DNS1123_LABEL.match(name):
        return (
            f"namespace {name!r} is not a DNS-1123 label: at most 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit"
        )
    return None


def object_name_problem(name: object) -> str | None:
    if wrong := _not_a_string("metadata.name", name):
        return wrong
    if not isinstance(name, str) or not name:
        return "metadata.name is required"
    if len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        return f"metadata.name {name!r} is not a valid Kubernetes object name (DNS-1123 subdomain)"
    return None


def environment_name_problem(name: object) -> str | None:
    if wrong := _not_a_string("environment name", name):
        return wrong
    if not isinstance(name, str) or not name:
        return "environment name is required"
    if len(name) > 63 or not _DNS1123_LABEL.match(name):
        return (
            f"environment name {name!r} must be a DNS-1123 label (it is used in labels and the "
            "commit status context gitsync/<name>)"
        )
    return None
