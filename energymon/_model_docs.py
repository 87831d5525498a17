"""Attribute docstrings of energymon's config models, read once per module instead of once per class.

The config models document each field with a docstring under it (``use_attribute_docstrings``); pydantic finds
each class's source on its own (frame walk, ``inspect.getmodule``, tokenising the module from the class on),
about a fifth of ``energymon validate``'s start-up for the hundred-odd models. Importing this module makes
pydantic read an energymon module's source once with :mod:`ast` and take each top-level class's docstrings
from that tree, with pydantic's own visitor, so the descriptions are the same (tests/test_cli_startup.py
compares them). A class it cannot place (nested, a name defined twice in its module, no source) and any other
package's models go through pydantic's own extraction; a pydantic without these internals is left alone.
"""

from __future__ import annotations

import ast
import sys
from typing import Any

__all__: list[str] = []

_trees: dict[str, dict[str, ast.ClassDef | None]] = {}  # module → top-level class name → its node (None: twice)


def _classes(module: str) -> dict[str, ast.ClassDef | None]:
    found = _trees.get(module)
    if found is None:
        found = {}
        path = getattr(sys.modules.get(module), "__file__", None)
        try:
            with open(str(path), encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, ValueError):
            tree = ast.Module(body=[], type_ignores=[])
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                found[node.name] = None if node.name in found else node
        _trees[module] = found
    return found


def _install() -> None:
    try:
        from pydantic._internal import _docs_extraction, _fields
    except ImportError:  # pragma: no cover - another pydantic layout: its own extraction stays
        return
    original = getattr(_fields, "extract_docstrings_from_cls", None)
    visitor_class = getattr(_docs_extraction, "DocstringVisitor", None)
    if original is None or visitor_class is None or getattr(original, "_energymon", False):
        return

    def extract(cls: type[Any], use_inspect: bool = False) -> dict[str, str]:
        module = getattr(cls, "__module__", "")
        if module.startswith("energymon.") and cls.__qualname__ == cls.__name__:
            node = _classes(module).get(cls.__name__)
            if node is not None:
                visitor = visitor_class()
                visitor.generic_visit(node)
                return dict(visitor.attrs)
        return dict(original(cls, use_inspect=use_inspect))

    extract._energymon = True  # type: ignore[attr-defined]
    setattr(_fields, "extract_docstrings_from_cls", extract)  # noqa: B010  # the name pydantic calls


_install()
