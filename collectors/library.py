"""The meter library: register maps of common meter models, shipped as YAML with the package.

Each map is ``meter_library/{name}.yaml`` beside this module, a :class:`~energymon.config.RegisterMap` whose
``source`` names the document it was transcribed from. A plant file uses one with ``model: {name}``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml
from pydantic import ValidationError

from energymon.config import RegisterMap

__all__ = ["library_map", "library_names"]

_FOLDER = "meter_library"
_SUFFIX = ".yaml"


def _folder() -> resources.abc.Traversable:
    return resources.files("energymon.collectors").joinpath(_FOLDER)


@cache
def _names() -> tuple[str, ...]:
    return tuple(sorted(
        entry.name.removesuffix(_SUFFIX)
        for entry in _folder().iterdir()
        if entry.is_file() and entry.name.endswith(_SUFFIX)
    ))


def library_names() -> list[str]:
    """Names of the maps in the library, sorted."""
    return list(_names())


@cache
def library_map(name: str) -> RegisterMap:
    """Load a map from the library. The result is immutable and shared.

    Raises:
        KeyError: no map has that name; the message lists the names there are.
        ValueError: the shipped file is not a valid register map (a packaging bug).
    """
    if name not in _names():
        raise KeyError(f"no register map {name!r} in the meter library; available: {', '.join(_names())}")
    text = _folder().joinpath(name + _SUFFIX).read_text(encoding="utf-8")
    try:
        return RegisterMap.model_validate(yaml.safe_load(text))
    except ValidationError as exc:
        raise ValueError(f"meter library map {name!r} is invalid: {exc}") from None
