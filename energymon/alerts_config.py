"""The ``alerts:`` section of the plant file: alert rules and notifiers.

Kept in its own module so the alert stage can grow without touching the collection models. Every rule kind
shares the lifecycle options of :class:`RuleBase` (``for_secs``, ``keep_firing_for_secs``,
``repeat_interval_secs``, severity, audience, notifiers); every notifier shares the routing filters of
:class:`NotifierBase` (``severities``, ``audiences``). ``alerts/README.md`` has a sample for each.

Cross-object checks (a rule naming a meter, quantity, product or notifier that does not exist) are in
:func:`check_alerts`, which :func:`energymon.validators.check_plant` runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from energymon import _model_docs  # noqa: F401  # field docstrings read once per module
from energymon.schema import ID_PATTERN

if TYPE_CHECKING:
    from energymon.config import Meter, PlantConfig

__all__ = [
    "REFERENCE_SECTIONS",
    "AlertmanagerNotifier",
    "AlertsConfig",
    "BudgetLevel",
    "BudgetRule",
    "CalibrationDueRule",
    "CompletenessRule",
    "CounterBackwardsRule",
    "CounterResetRule",
    "EmailNotifier",
    "Escalation",
    "IndicatorRule",
    "MqttNotifier",
    "Notifier",
    "NotifierBase",
    "OfflineRule",
    "RangeItem",
    "RangeRule",
    "Rule",
    "RuleBase",
    "ThresholdRule",
    "WebhookNotifier",
    "check_alerts",
]

Id = Annotated[str, Field(pattern=ID_PATTERN)]
QuantityName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Severity = Literal["info", "warning", "critical"]
Audience = Literal["energy_manager", "regulator"]


class Strict(BaseModel):
    """Base of the alert config models: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# --------------------------------------------------------------------------- rules


class RuleBase(Strict):
    """What every rule kind has: identity, routing and the lifecycle options."""

    kind: str
    id: Id
    """rule id; alert ids are `{rule id}:{source}`"""
    for_secs: float = Field(default=0, ge=0)
    """the condition must hold this long (event time) before the alert fires"""
    keep_firing_for_secs: float = Field(default=0, ge=0)
    """a firing alert resolves only after its clear condition held this long (event time), like Prometheus"""
    repeat_interval_secs: float = Field(default=0, ge=0)
    """remind the notifiers of a firing, unacknowledged alert this often (0 = never)"""
    severity: Severity = "warning"
    """severity"""
    audience: tuple[Audience, ...] = ("energy_manager",)
    """who the alert is for"""
    notifiers: list[Id] = Field(default_factory=list)
    """notifier ids the alert goes to (empty = every notifier whose filters accept it)"""
    summary: str = ""
    """one-line text sent with the alert (default: generated from the rule)"""


class ThresholdRule(RuleBase):
    """Alert when a live value stays above (or below) a threshold for a duration.

    ``clear_above`` / ``clear_below`` give hysteresis: a firing alert resolves only once the value is back past
    the clear threshold. Without them, the alert clears at the threshold itself.
    """

    kind: Literal["threshold"]
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


class IndicatorRule(RuleBase):
    """Alert when a product's 单位产品综合能耗 of a period is worse than 基准 or over the 限额 (3级 限定值).

    Reads the ``indicator`` rows the accounting writes (tags ``product``, ``indicator``, ``period``; fields
    ``value``, ``status``, ``quota_grade``, ``baseline``, ``limit``, ``output``). One alert per product. The
    monthly value is the early warning, the yearly (or year-to-date) value the legal test: use one rule each.
    """

    kind: Literal["indicator"]
    condition: Literal["over_limit", "below_baseline"] = "over_limit"
    """`over_limit`: worse than the 3级 限定值 (status 4 or quota_grade 4); `below_baseline`: worse than 基准"""
    period: Literal["hour", "day", "month", "ytd", "year"] = "month"
    """which period's rows are judged (the `period` tag)"""
    product: Id | None = None
    """only this product (null = every product)"""
    min_output: float = Field(default=0, ge=0)
    """ignore periods with less output than this (early in a month the ratio is noisy)"""


class Escalation(Strict):
    """The regulator's repair clock: an alert older than N working days escalates.

    Working days (plant local time) come from the China calendar of the ``holidays`` package: public holidays,
    days off moved onto weekdays and weekend days worked instead (调休). ``holidays`` and ``workdays`` override
    it (a plant's shutdown days, or a year's schedule the installed package does not know yet; a warning is
    logged once for such a year).
    """

    after_working_days: float = Field(default=3, gt=0)
    """working days (plant local time) after the alert started"""
    severity: Severity = "critical"
    """severity once escalated"""
    audience: tuple[Audience, ...] = ("energy_manager", "regulator")
    """audience once escalated"""
    holidays: list[date] = Field(default_factory=list)
    """extra days off (overrides the China calendar: never a working day)"""
    workdays: list[date] = Field(default_factory=list)
    """extra working days (overrides the China calendar: always a working day, e.g. an unlisted 调休 Saturday)"""


class OfflineRule(RuleBase):
    """Alert when a meter sends no good value, or a gateway's status topic says offline, for N intervals.

    Evaluated on the engine tick by event time. A meter's interval is its poll group's; MQTT JSON meters use
    ``interval_secs``. A gateway's interval is its shortest poll group's. ``escalate`` is the 3-working-day
    repair clock: an offline alert that old escalates (default: to critical, for the regulator too).
    """

    kind: Literal["offline"]
    target: Literal["meter", "gateway"] = "meter"
    """what is watched: meters (no good points) or gateways (status topic `offline`)"""
    ids: list[Id] = Field(default_factory=list)
    """meter or gateway ids (empty = every meter, or the plant's gateway)"""
    intervals: int = Field(default=3, ge=1)
    """missed intervals before the source counts as offline"""
    interval_secs: float | None = Field(default=None, gt=0)
    """interval override (required in effect for push meters: default 60 s for them)"""
    escalate: Escalation | None = Field(default_factory=Escalation)
    """repair clock (null = never escalate)"""


class CompletenessRule(RuleBase):
    """Alert when an item's daily completeness (good points / expected points) is under ``min_pct``.

    Of a meter's accounted counter only the readings the counter rules accept count: a rejected 0.0 or spike is
    a missing reading (docs/accounting.md, counter rules).

    Days are cut in the plant's time zone and judged ``grace_secs`` after local midnight. The expected count
    comes from the item's poll interval (``interval_secs`` for push meters). One alert per item
    (``{meter}.{quantity}``); the next complete day resolves it.
    """

    kind: Literal["completeness"]
    meters: list[Id] = Field(default_factory=list)
    """meters (empty = every meter)"""
    quantities: list[QuantityName] = Field(default_factory=list)
    """quantities (empty = each meter's counter quantity, or all its quantities if it has no counter)"""
    min_pct: float = Field(default=90, gt=0, le=100)
    """completeness below this percent fires"""
    interval_secs: float | None = Field(default=None, gt=0)
    """expected interval override (default: the poll group's; 60 s for push meters)"""
    grace_secs: float = Field(default=600, ge=0)
    """wait this long after local midnight for late data before judging the day"""
    escalate: Escalation | None = Field(default_factory=Escalation)
    """repair clock (null = never escalate)"""


class RangeItem(Strict):
    """One registered data item with its plausible range (the regulator's dataValueMin/dataValueMax)."""

    meter: Id
    """meter id"""
    quantity: QuantityName
    """quantity"""
    min: float | None = None
    """values below this are abnormal"""
    max: float | None = None
    """values above this are abnormal"""

    @model_validator(mode="after")
    def _bounds(self) -> RangeItem:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class RangeRule(RuleBase):
    """Alert when a value is outside its item's registered min/max. One alert per item (``{meter}.{quantity}``)."""

    kind: Literal["range"]
    items: list[RangeItem] = Field(min_length=1)
    """the items and their ranges"""


class CounterBackwardsRule(RuleBase):
    """Alert when a meter's counter decreases without a recorded meter replacement.

    Rollovers at the counter's ``counter_max`` are not decreases. Replacements come from
    ``accounting.replacements`` and from what the runtime feeds in. The alert resolves when the counter is back
    at or above the value before the drop (a glitch), or when a replacement covering the drop is recorded.
    """

    kind: Literal["counter_backwards"]
    meters: list[Id] = Field(default_factory=list)
    """meters (empty = every meter with a `counter`)"""
    tolerance: float = Field(default=0, ge=0)
    """decreases up to this much (counter unit) are rounding noise"""
    replacement_window_secs: float = Field(default=3600, ge=0)
    """a replacement recorded this close to the drop explains it"""


class CounterResetRule(RuleBase):
    """Alert when a meter's counter was reset or swapped without a recorded replacement.

    The counter rules (docs/accounting.md) take a counter that falls (or jumps beyond its bound) and stays at the
    new level for three readings as an unrecorded reset or meter swap: the new level becomes the baseline and
    nothing is booked across the jump, so what was used between the last good reading and the jump is missing
    from the figures until the energy manager records the change in ``accounting.replacements`` and reports are
    recomputed. One alert per meter; it resolves when a replacement covering the jump is recorded, or
    ``resolve_after_secs`` of event time after the jump.
    """

    kind: Literal["counter_reset"]
    meters: list[Id] = Field(default_factory=list)
    """meters (empty = every meter with a `counter`)"""
    replacement_window_secs: float = Field(default=3600, ge=0)
    """a replacement recorded this close to the jump explains it"""
    resolve_after_secs: float = Field(default=86400, gt=0)
    """event time after the jump at which the alert resolves by itself"""


class BudgetLevel(Strict):
    """One level of the budget alert: year-to-date use at or above ``at_pct`` of the pro-rated budget."""

    at_pct: float = Field(gt=0)
    """percent of the pro-rated budget"""
    severity: Severity
    """severity at this level"""
    audience: tuple[Audience, ...] | None = None
    """audience at this level (null = the rule's)"""


class BudgetRule(RuleBase):
    """Alert when year-to-date energy use reaches 80/90/100 % of the pro-rated 用能预算.

    Reads the ``budget`` rows of the accounting (tag ``scope``; field ``ytd_share``, year-to-date use over the
    pro-rated budget, 1.0 = 100 %). One alert per scope; its severity climbs with the level reached and never
    drops within a cycle; it resolves once the share is ``clear_margin_pct`` under the lowest level.
    """

    kind: Literal["budget"]
    levels: list[BudgetLevel] = Field(
        default_factory=lambda: [
            BudgetLevel(at_pct=80, severity="info"),
            BudgetLevel(at_pct=90, severity="warning"),
            BudgetLevel(at_pct=100, severity="critical", audience=("energy_manager", "regulator")),
        ],
        min_length=1,
    )
    """levels, ascending"""
    clear_margin_pct: float = Field(default=2, ge=0)
    """hysteresis: resolves only below the lowest level minus this"""
    scope: Id | None = None
    """only rows with this `scope` tag (null = every scope)"""

    @model_validator(mode="after")
    def _ascending(self) -> BudgetRule:
        pcts = [lv.at_pct for lv in self.levels]
        if pcts != sorted(pcts) or len(set(pcts)) != len(pcts):
            raise ValueError("levels must have strictly ascending at_pct")
        return self


class CalibrationDueRule(RuleBase):
    """Alert ``days_before`` days before a meter's ``calibration_due`` date (plant local time); overdue escalates."""

    kind: Literal["calibration_due"]
    days_before: int = Field(default=30, ge=0)
    """fire this many days before the due date"""
    meters: list[Id] = Field(default_factory=list)
    """meters (empty = every meter with a `calibration_due`)"""
    overdue_severity: Severity = "critical"
    """severity once the date has passed"""


Rule = Annotated[
    ThresholdRule | IndicatorRule | OfflineRule | CompletenessRule | RangeRule | CounterBackwardsRule
    | CounterResetRule | BudgetRule | CalibrationDueRule,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- notifiers


class NotifierBase(Strict):
    """What every notifier has: its id and the routing filters."""

    type: str
    id: Id
    """notifier id"""
    severities: list[Severity] = Field(default_factory=list)
    """only alerts of these severities (empty = all)"""
    audiences: list[Audience] = Field(default_factory=list)
    """only alerts for one of these audiences (empty = all)"""


class RetryingNotifier(NotifierBase):
    """A notifier whose records wait in the outbox (the alert state file) until the receiver accepted them."""

    max_retries: int | None = Field(default=None, ge=0, le=100000)
    """retries of one record before it is dead-lettered (null = no count limit: `retry_for_secs` decides)"""
    retry_for_secs: float = Field(default=21600, ge=1, le=30 * 86400)
    """how long one record is retried (from when it was raised) before it is dead-lettered"""
    backoff_max_secs: float = Field(default=300, gt=0, le=86400)
    """longest wait between two attempts of one record (capped exponential back-off with full jitter)"""
    max_in_flight: int = Field(default=4, ge=1, le=64)
    """attempts under way at once, each for another alert (one alert's records go in order, one at a time)"""


class WebhookNotifier(RetryingNotifier):
    """POST each alert change as JSON, signed with HMAC-SHA256 when a secret is set."""

    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    """endpoint receiving POSTed JSON"""
    secret_env: str | None = Field(default=None, description="environment variable holding the HMAC secret")
    timeout_ms: int = Field(default=5000, ge=100, le=60000)
    """HTTP timeout per attempt"""


class MqttNotifier(NotifierBase):
    """Publish each alert's state as retained JSON on ``energymon/v1/{enterprise}/alerts/{rule}/{source}``."""

    type: Literal["mqtt"]
    url: str | None = Field(default=None, pattern=r"^(mqtts?|inproc)://")
    """broker URL (null = the plant's uplink broker, with its credentials and TLS)"""
    username: str | None = None
    """user name (with `url`)"""
    password_env: str | None = None
    """environment variable holding the password (with `url`)"""
    qos: Literal[0, 1] = 1
    """MQTT QoS"""


class EmailNotifier(RetryingNotifier):
    """Send each alert change as a plain-text e-mail over SMTP."""

    type: Literal["email"]
    host: str = Field(min_length=1)
    """SMTP server"""
    port: int = Field(default=587, ge=1, le=65535)
    """SMTP port (587 submission with STARTTLS, 465 implicit TLS, 25 plain)"""
    security: Literal["starttls", "tls", "none"] = "starttls"
    """`starttls` (upgrade after connecting), `tls` (implicit TLS) or `none`"""
    allow_plaintext_password: bool = False
    """with `security: none` and a `username`: send the password in clear text anyway (refused otherwise)"""
    ca_file: str | None = None
    """PEM file of CAs to trust (default: the system store)"""
    username: str | None = None
    """SMTP user (login only when set)"""
    password_env: str | None = None
    """environment variable holding the SMTP password"""
    from_addr: str = Field(min_length=3)
    """sender address"""
    to: list[str] = Field(min_length=1)
    """recipients"""
    subject_prefix: str = "[energymon]"
    """start of every subject"""
    timeout_ms: int = Field(default=10000, ge=100, le=120000)
    """SMTP timeout per attempt"""

    @model_validator(mode="after")
    def _login(self) -> EmailNotifier:
        if self.password_env is not None and self.username is None:
            raise ValueError("password_env needs username")
        if self.security == "none" and self.username is not None and not self.allow_plaintext_password:
            raise ValueError(
                "security: none with a username would send the SMTP password in clear text; use starttls or tls, "
                "or set allow_plaintext_password: true if the network path is trusted")
        return self


class AlertmanagerNotifier(RetryingNotifier):
    """POST alerts to a Prometheus Alertmanager (API v2, ``/api/v2/alerts``); firing alerts are re-sent."""

    type: Literal["alertmanager"]
    url: str = Field(pattern=r"^https?://")
    """Alertmanager base URL, e.g. `http://127.0.0.1:9093`"""
    timeout_ms: int = Field(default=5000, ge=100, le=60000)
    """HTTP timeout per attempt"""
    resend_interval_secs: float = Field(default=60, ge=1, le=3600)
    """firing alerts are posted again this often (Alertmanager resolves alerts it stops hearing about)"""
    labels: dict[str, str] = Field(default_factory=dict)
    """extra static labels (e.g. `site`)"""


Notifier = Annotated[
    WebhookNotifier | MqttNotifier | EmailNotifier | AlertmanagerNotifier, Field(discriminator="type")
]


class AlertsConfig(Strict):
    """Alert rules and where alerts go."""

    rules: list[Rule] = Field(default_factory=list)
    """alert rules (one of the `alerts.rules[]` kinds below)"""
    notifiers: list[Notifier] = Field(default_factory=list)
    """notifiers (one of the `alerts.notifiers[]` types below)"""
    dead_letter_keep_days: float = Field(default=90, gt=0, le=3650)
    """dead letters stay in the outbox (for `energymon alerts replay`) this long, then are purged"""


#: The sub-sections for the generated config reference (``energymon.config_reference``).
REFERENCE_SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("alerts", AlertsConfig),
    ("alerts.rules[] kind: threshold", ThresholdRule),
    ("alerts.rules[] kind: indicator", IndicatorRule),
    ("alerts.rules[] kind: offline", OfflineRule),
    ("alerts.rules[] kind: completeness", CompletenessRule),
    ("alerts.rules[] kind: range", RangeRule),
    ("alerts.rules[].items[]", RangeItem),
    ("alerts.rules[] kind: counter_backwards", CounterBackwardsRule),
    ("alerts.rules[] kind: counter_reset", CounterResetRule),
    ("alerts.rules[] kind: budget", BudgetRule),
    ("alerts.rules[].levels[]", BudgetLevel),
    ("alerts.rules[] kind: calibration_due", CalibrationDueRule),
    ("alerts.rules[].escalate", Escalation),
    ("alerts.notifiers[] type: webhook", WebhookNotifier),
    ("alerts.notifiers[] type: mqtt", MqttNotifier),
    ("alerts.notifiers[] type: email", EmailNotifier),
    ("alerts.notifiers[] type: alertmanager", AlertmanagerNotifier),
]


# --------------------------------------------------------------------------- cross-object checks


def _quantities(plant: PlantConfig, meter: Meter) -> dict[str, tuple[str, str, float | None]]:
    try:
        return plant.quantities(meter)
    except (KeyError, ImportError, ValueError):
        return {}


def check_alerts(plant: PlantConfig) -> Iterator[tuple[str, str]]:
    """Cross-object checks of the alerts section: ``(key path, message)`` for each problem."""
    meters = {m.id: m for m in plant.meters}
    products = {p.id for p in plant.products}
    notifiers = {n.id for n in plant.alerts.notifiers}

    def meter_quantity(where: str, meter_id: str, quantity: str | None) -> Iterator[tuple[str, str]]:
        meter = meters.get(meter_id)
        if meter is None:
            yield f"{where}.meter", f"unknown meter {meter_id!r}"
            return
        if quantity is not None:
            q = _quantities(plant, meter)
            if q and quantity not in q:
                yield f"{where}.quantity", f"meter {meter.id!r} has no quantity {quantity!r}"

    for i, rule in enumerate(plant.alerts.rules):
        base = f"alerts.rules[{i}]"
        if isinstance(rule, ThresholdRule):
            yield from meter_quantity(base, rule.meter, rule.quantity)
        elif isinstance(rule, RangeRule):
            for j, item in enumerate(rule.items):
                yield from meter_quantity(f"{base}.items[{j}]", item.meter, item.quantity)
        elif isinstance(rule, IndicatorRule):
            if rule.product is not None and rule.product not in products:
                yield f"{base}.product", f"unknown product {rule.product!r}"
        elif isinstance(rule, OfflineRule):
            for j, sid in enumerate(rule.ids):
                if rule.target == "meter" and sid not in meters:
                    yield f"{base}.ids[{j}]", f"unknown meter {sid!r}"
                elif rule.target == "gateway" and sid != plant.gateway.id:
                    yield f"{base}.ids[{j}]", f"unknown gateway {sid!r} (this plant's gateway is {plant.gateway.id!r})"
        elif isinstance(rule, CompletenessRule | CounterBackwardsRule | CounterResetRule | CalibrationDueRule):
            for j, mid in enumerate(rule.meters):
                meter = meters.get(mid)
                if meter is None:
                    yield f"{base}.meters[{j}]", f"unknown meter {mid!r}"
                elif isinstance(rule, CounterBackwardsRule | CounterResetRule) and meter.counter is None:
                    yield f"{base}.meters[{j}]", f"meter {mid!r} has no counter"
                elif isinstance(rule, CalibrationDueRule) and meter.calibration_due is None:
                    yield f"{base}.meters[{j}]", f"meter {mid!r} has no calibration_due"
            if isinstance(rule, CompletenessRule) and rule.quantities and rule.meters:
                for j, quantity in enumerate(rule.quantities):
                    if not any(quantity in _quantities(plant, meters[m]) for m in rule.meters if m in meters):
                        yield f"{base}.quantities[{j}]", f"none of the rule's meters has quantity {quantity!r}"
        for j, nid in enumerate(rule.notifiers):
            if nid not in notifiers:
                yield f"{base}.notifiers[{j}]", f"unknown notifier {nid!r}"
