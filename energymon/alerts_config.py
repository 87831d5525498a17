"""The ``alerts:`` section of the plant file: alert rules and notifiers.

Kept in its own module so the alert stage can grow without touching the collection models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from energymon.schema import ID_PATTERN

__all__ = ["AlertsConfig", "Notifier", "Rule", "ThresholdRule", "WebhookNotifier"]

Id = Annotated[str, Field(pattern=ID_PATTERN)]
QuantityName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Severity = Literal["info", "warning", "critical"]
Audience = Literal["energy_manager", "regulator"]


class Strict(BaseModel):
    """Base of the alert config models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ThresholdRule(Strict):
    """Alert when a live value stays above (or below) a threshold for a duration.

    ``clear_above`` / ``clear_below`` give hysteresis: a firing alert resolves only once the value is back past
    the clear threshold. Without them, the alert clears at the threshold itself.
    """

    kind: Literal["threshold"]
    id: Id
    """rule id"""
    meter: Id
    """meter id"""
    quantity: QuantityName
    """quantity watched"""
    above: float | None = None
    """fire when the value is above this"""
    below: float | None = None
    """fire when the value is below this"""
    clear_above: float | None = None
    """an `above` alert resolves only at or under this (hysteresis)"""
    clear_below: float | None = None
    """a `below` alert resolves only at or over this (hysteresis)"""
    for_secs: float = Field(default=0, ge=0)
    """the condition must hold this long (event time) before the alert fires"""
    severity: Severity = "warning"
    """severity"""
    audience: tuple[Audience, ...] = ("energy_manager",)
    """who the alert is for"""
    notifiers: list[Id] = Field(default_factory=list)
    """notifier ids the alert goes to"""
    summary: str = ""
    """one-line text sent with the alert"""

    @model_validator(mode="after")
    def _direction(self) -> ThresholdRule:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of above or below")
        if self.above is not None:
            if self.clear_below is not None:
                raise ValueError("an 'above' rule clears with clear_above (below the threshold), not clear_below")
            if self.clear_above is not None and self.clear_above > self.above:
                raise ValueError(f"clear_above {self.clear_above} must not exceed above {self.above}")
        if self.below is not None:
            if self.clear_above is not None:
                raise ValueError("a 'below' rule clears with clear_below (above the threshold), not clear_above")
            if self.clear_below is not None and self.clear_below < self.below:
                raise ValueError(f"clear_below {self.clear_below} must not be under below {self.below}")
        return self


class WebhookNotifier(Strict):
    """POST each alert change as JSON, signed with HMAC-SHA256 when a secret is set."""

    type: Literal["webhook"]
    id: Id
    """notifier id"""
    url: str = Field(pattern=r"^https?://")
    """endpoint receiving POSTed JSON"""
    secret_env: str | None = Field(default=None, description="environment variable holding the HMAC secret")
    timeout_ms: int = Field(default=5000, ge=100, le=60000)
    """HTTP timeout per attempt"""
    max_retries: int = Field(default=5, ge=0, le=100)
    """retries before the alert goes to the dead-letter file"""


Rule = Annotated[ThresholdRule, Field(discriminator="kind")]
Notifier = Annotated[WebhookNotifier, Field(discriminator="type")]


class AlertsConfig(Strict):
    """Alert rules and where alerts go."""

    rules: list[Rule] = Field(default_factory=list)
    """alert rules"""
    notifiers: list[Notifier] = Field(default_factory=list)
    """notifiers"""
