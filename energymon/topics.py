"""MQTT topic scheme, version 1.

All energymon topics live below ``energymon/v1/{enterprise}/``:

=========================================================  ==============================================
topic                                                      content
=========================================================  ==============================================
``energymon/v1/{enterprise}/{gateway}/readings``           :class:`~energymon.schema.Batch`, QoS 1
``energymon/v1/{enterprise}/{gateway}/status``             ``online`` / ``offline`` (retained; last will)
``energymon/v1/{enterprise}/alerts/{rule}/{source}``       alert state JSON (retained)
=========================================================  ==============================================

``alerts`` is therefore a reserved word and cannot be a gateway id. Processors subscribe to
:func:`readings_filter`, optionally through an MQTT v5 shared subscription (``$share/{group}/...``).

The topic is the identity: the broker's ACL lets a gateway publish only on its own readings and status topics
(deploy/mosquitto/acl), so the processor takes the enterprise and gateway of a batch from
:func:`parse_readings_topic` and sets aside a batch whose own fields say otherwise (docs/ARCHITECTURE.md,
"Trust boundary").
"""

from __future__ import annotations

__all__ = [
    "PREFIX",
    "RESERVED_GATEWAY_IDS",
    "alert_topic",
    "parse_readings_topic",
    "readings_filter",
    "readings_topic",
    "status_topic",
]

PREFIX = "energymon/v1"
RESERVED_GATEWAY_IDS = frozenset({"alerts"})


def readings_topic(enterprise: str, gateway: str) -> str:
    """Topic a gateway publishes its batches on."""
    return f"{PREFIX}/{enterprise}/{gateway}/readings"


def status_topic(enterprise: str, gateway: str) -> str:
    """Retained status topic of a gateway; also its MQTT last will."""
    return f"{PREFIX}/{enterprise}/{gateway}/status"


def alert_topic(enterprise: str, rule: str, source: str) -> str:
    """Retained topic holding the state of one alert (rule, source)."""
    return f"{PREFIX}/{enterprise}/alerts/{rule}/{source}"


def readings_filter(enterprise: str = "+", share_group: str | None = None) -> str:
    """Subscription filter for readings of one or all enterprises, optionally shared."""
    flt = f"{PREFIX}/{enterprise}/+/readings"
    return f"$share/{share_group}/{flt}" if share_group else flt


def parse_readings_topic(topic: str) -> tuple[str, str] | None:
    """Return ``(enterprise, gateway)`` for a readings topic, else None."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[0] == "energymon" and parts[1] == "v1" and parts[4] == "readings":
        return parts[2], parts[3]
    return None
