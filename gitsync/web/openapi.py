"""The JSON API's OpenAPI 3.1 document (``GET /api/v1/openapi.json``). Pure.

The schemas are generated from the view model's dataclasses (:mod:`gitsync.web.view`), the
very values :func:`~gitsync.web.view.as_json` answers with, so the document cannot drift from
the answers: each field is required, none other is allowed, ``X | None`` is nullable, a tuple
is an array. The paths are :data:`ROUTES`, which :class:`~gitsync.web.site.StatusSite`
serves (a test holds the two equal and validates real answers against the schemas).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from gitsync.web import view

OPENAPI_PATH = "/api/v1/openapi.json"
_REF = "#/components/schemas/"
_SCALARS = {str: "string", int: "integer", bool: "boolean", float: "number"}
_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "what is wrong, in words"}},
    "required": ["error"],
    "additionalProperties": False,
}


def _schema(hint: Any, components: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema (2020-12, OpenAPI 3.1's dialect) of one type annotation."""
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        kinds = [a for a in args if a is not type(None)]
        [kind] = kinds  # the view model has X | None only
        return {"oneOf": [_schema(kind, components), {"type": "null"}]}
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": _schema(args[0], components)}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        name = hint.__name__
        if name not in components:
            components[name] = {}  # placed first: a dataclass met again is a reference
            hints = typing.get_type_hints(hint)
            fields = [f.name for f in dataclasses.fields(hint)]
            components[name] = {
                "type": "object",
                "properties": {f: _schema(hints[f], components) for f in fields},
                "required": fields,
                "additionalProperties": False,
            }
        return {"$ref": _REF + name}
    raise TypeError(f"no JSON schema for {hint!r}")


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "401": "ui.auth is configured and the request does not carry the credential",
    "403": "the agent listens beyond loopback and ui.auth is not configured",
    "404": "no such environment, or the status page is disabled (ui.enabled: false)",
    "500": "the status page's credential cannot be read",
    "503": "the cluster cannot be read",
}

# (path, summary, the answer's type, description). `None` in a type: the answer may be null.
ROUTES: tuple[tuple[str, str, Any, str], ...] = (
    (
        "/api/v1/environments",
        "Every environment's summary and the open previews",
        view.Overview,
        "what the overview page shows",
    ),
    (
        "/api/v1/environments/{name}",
        "One environment: its services by wave, the rollout, history and Events",
        view.EnvironmentView,
        "what the environment's page shows",
    ),
    (
        "/api/v1/environments/{name}/rollout",
        "The environment's last rollout: its changes and timeline",
        view.RolloutView | None,
        "the rollout; null when the environment has none recorded",
    ),
    (
        "/api/v1/previews",
        "The open pull-request previews",
        tuple[view.PreviewView, ...],
        "the open previews",
    ),
)


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document of the JSON API; ``version``: gitsync's."""
    components: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, Any] = {}
    for path, summary, answer, description in ROUTES:
        responses = {"200": _answer(description, _schema(answer, components))}
        for status, why in _ERRORS.items():
            responses[status] = _answer(why, {"$ref": _REF + "Error"})
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": _operation_id(path),
            "responses": responses,
        }
        if "{name}" in path:
            operation["parameters"] = [
                {
                    "name": "name",
                    "in": "path",
                    "required": True,
                    "description": "the environment's name (gitsync.yaml)",
                    "schema": {"type": "string"},
                }
            ]
        paths[path] = {"get": operation}
    paths[OPENAPI_PATH] = {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "responses": {
                "200": _answer("the OpenAPI 3.1 document", {"type": "object"}),
                **{s: _answer(w, {"$ref": _REF + "Error"}) for s, w in _ERRORS.items()
                   if s != "503"},
            },
        }
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gitsync status API",
            "version": version,
            "description": (
                "Read-only: the data of the status page's views (docs/status-page.md). The "
                "same authentication as the page (ui.auth): a bearer token or basic auth."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
        "security": [{"bearer": []}, {"basic": []}, {}],
    }


def _operation_id(path: str) -> str:
    words = [w.strip("{}") for w in path.removeprefix("/api/v1/").split("/")]
    return "_".join(["get", *words])
