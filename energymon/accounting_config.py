"""The ``accounting:`` section of the plant file: what the energy accounting needs beyond the meters.

Kept in its own module so the accounting can grow without touching the collection models.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from energymon.config import PlantConfig

__all__ = ["AccountingConfig", "check_accounting"]


class AccountingConfig(BaseModel):
    """Energy-accounting settings of the plant."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def check_accounting(plant: PlantConfig) -> Iterator[tuple[str, str]]:
    """Cross-object checks of the accounting section: ``(key path, message)`` for each problem."""
    yield from ()
