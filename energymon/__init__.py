"""energymon: energy-monitoring pipeline for key energy-consuming units (重点用能单位).

Meters → gateway (store-and-forward, MQTT uplink) → processors (counters → energy → standard coal → indicators →
grades) → store → alerts. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
