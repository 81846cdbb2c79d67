"""The allowlist contract type for import-linter (``lint-imports``, pyproject.toml).

import-linter's own contracts forbid named modules; the pure core needs the opposite: it may
import only each other, the standard-library modules it is allowed and PyYAML and deepdiff, so
a module nobody thought to forbid (a new edge, or ``socket``) breaks the contract by default.
docs/architecture.md (Layers) says what each contract protects.
"""

from __future__ import annotations

from typing import Any, cast

from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output


class AllowlistContract(Contract):
    """Every module in or under ``source_modules`` imports only modules in or under
    ``source_modules``, the package itself (its ``__init__``: ``from gitsync import
    __version__``) and ``allowed_modules`` (external ones by their top-level name, as the
    import graph records them). Function-level imports count."""

    type_name = "allowlist"

    source_modules = fields.ListField(subfield=fields.StringField())
    allowed_modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        # Each field holds its parsed value on the instance (import-linter's Contract).
        sources = cast("list[str]", self.source_modules)
        allowed = {*sources, *cast("list[str]", self.allowed_modules)}
        missing = sorted(m for m in sources if m not in graph.modules)
        if missing:
            # A module renamed or deleted must leave the list too, or the list says nothing.
            return ContractCheck(kept=False, metadata={"missing": missing, "broken": []})
        checked = {m for s in sources for m in {s, *graph.find_descendants(s)}}
        roots = {m.split(".")[0] for m in checked}
        broken = sorted(
            (importer, imported, line)
            for importer in checked
            for imported in graph.find_modules_directly_imported_by(importer)
            if not _within(imported, allowed) and imported not in roots
            for line in _lines(graph, importer, imported)
        )
        return ContractCheck(kept=not broken, metadata={"missing": [], "broken": broken})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module in check.metadata["missing"]:
            output.print_error(f"{module} is listed but is not a module of the package")
        for importer, imported, line in check.metadata["broken"]:
            output.print_error(f"{importer} imports {imported} (l.{line}), not allowed")
        output.new_line()


def _within(module: str, allowed: set[str]) -> bool:
    parts = module.split(".")
    return any(".".join(parts[:n]) in allowed for n in range(1, len(parts) + 1))


def _lines(graph: ImportGraph, importer: str, imported: str) -> list[Any]:
    details = graph.get_import_details(importer=importer, imported=imported)
    return [d["line_number"] for d in details] or ["?"]
