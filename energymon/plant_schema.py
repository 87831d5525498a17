"""The plant file's JSON Schema, for editors' YAML support (completion, hover docs, checks as you type).

    energymon schema --out plant.schema.json

then start the plant file with ``# yaml-language-server: $schema=./plant.schema.json`` (the YAML extension of
VS Code, Neovim's yamlls, JetBrains) or map it in VS Code's ``yaml.schemas`` setting. The schema is generated
from the pydantic models :func:`~energymon.config.load_plant` validates with, so it always matches the loader;
the loader also checks what a schema cannot (references between ids, units, register overlaps), so
``energymon validate`` stays the final word.
"""

from __future__ import annotations

from typing import Any

from energymon import __version__
from energymon.config import PlantConfig

__all__ = ["plant_json_schema"]

SCHEMA_ID = "https://energymon.invalid/schemas/plant.schema.json"


def plant_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a plant file, in the form YAML is written (dates as strings)."""
    schema: dict[str, Any] = PlantConfig.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "energymon plant file",
        "description": f"Plant file of energymon {__version__}: enterprise, processes, buses, meters, products, "
        "gateway, uplink, processor, alerts, accounting. Check a file with `energymon validate FILE`.",
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }
