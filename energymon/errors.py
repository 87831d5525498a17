"""The one error tree of energymon.

Every error the pipeline raises on purpose derives from :class:`EnergymonError`. The tree separates what a
caller can retry (the network, a device, a store that is down) from what it cannot (bad config, a payload
that will never parse)::

    EnergymonError
    ├── ConfigError              bad plant file or settings; names the file and the key path (fatal)
    ├── SourceError              a meter or bus could not be read
    │   ├── DeviceTimeoutError       no answer in time (retriable)
    │   ├── DeviceExceptionError     the device answered with a protocol exception code
    │   ├── ConnectionLostError      socket / serial failure; the bus reconnects (retriable)
    │   └── DecodeError              the reply could not be decoded to a value
    ├── DataError                a payload or record is malformed; it is set aside, never retried
    │   └── SchemaError              a message does not match the wire schema
    │       └── PayloadTooLargeError     beyond a configured size or point bound (nothing beyond it is allocated)
    ├── InputError               a file or flag given on the command line is unusable; names it (exit 2)
    ├── TransportError           the broker could not be reached or refused us (retriable)
    ├── StoreError               the time-series store refused or failed a write (retriable)
    │   └── UnreadableStoreError the store answers but cannot be read back (exit 2)
    ├── NotifyError              a notifier could not deliver an alert (retriable)
    └── OutboxError              the gateway's outbox file failed (defined in energymon.gateway.queue)
        ├── OutboxCorruptError       quick_check failed; the message names the file and the recovery
        └── OutboxDiskFullError      SQLITE_FULL: points are counted as dropped, polling continues

``retriable`` is a class attribute; the runtime, not the plugin, applies backoff to retriable errors.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "ConnectionLostError",
    "DataError",
    "DecodeError",
    "DeviceExceptionError",
    "DeviceTimeoutError",
    "EnergymonError",
    "InputError",
    "NotifyError",
    "PayloadTooLargeError",
    "SchemaError",
    "SourceError",
    "StoreError",
    "TransportError",
    "UnreadableStoreError",
]

from dataclasses import dataclass


class EnergymonError(Exception):
    """Base of every error energymon raises on purpose."""

    retriable: bool = False


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a configuration file.

    Attributes:
        path: dotted key path, e.g. ``meters[2].source.registers[0].count``.
        message: why the value is wrong.
        line: 1-based line in the file where the key stands, when known.
    """

    path: str
    message: str
    line: int | None = None

    def render(self, file: str) -> str:
        """Return ``file:line: path: message``."""
        where = f"{file}:{self.line}" if self.line else file
        return f"{where}: {self.path or '<root>'}: {self.message}"


class ConfigError(EnergymonError):
    """A configuration file is invalid. Carries every issue found, not only the first."""

    def __init__(self, file: str, issues: list[ConfigIssue]) -> None:
        self.file = file
        self.issues = issues
        super().__init__("\n".join(issue.render(file) for issue in issues))


class SourceError(EnergymonError):
    """A meter, bus or subscription could not deliver readings.

    Args:
        device: the meter or bus id at fault, always part of the message.
        message: what went wrong.
    """

    def __init__(self, device: str, message: str) -> None:
        self.device = device
        super().__init__(f"{device}: {message}")


class DeviceTimeoutError(SourceError):
    """The device did not answer within its timeout."""

    retriable = True


class DeviceExceptionError(SourceError):
    """The device answered with a protocol exception (e.g. Modbus exception code)."""

    def __init__(self, device: str, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(device, message or f"exception code {code}")

    @property
    def busy(self) -> bool:
        """True for Modbus 'server device busy' (6) and 'acknowledge' (5): retry in place."""
        return self.code in (5, 6)


class ConnectionLostError(SourceError):
    """The connection to a bus failed; the bus reconnects with backoff."""

    retriable = True


class DecodeError(SourceError):
    """A reply could not be decoded into a value (wrong length, NaN where not allowed...)."""


class DataError(EnergymonError):
    """A payload or record is malformed. It is counted and set aside, never retried."""


class SchemaError(DataError):
    """A message does not match the energymon wire schema."""


class PayloadTooLargeError(SchemaError):
    """A message is larger than the receiver takes in (as received, after decompression, or in points)."""
class InputError(EnergymonError, ValueError):
    """A file or flag given on the command line cannot be used (the command exits with 2).

    Args:
        source: the file name or the flag (``--store-file``) at fault, always part of the message.
        message: what is wrong and what is expected.
        line: 1-based line in the file, when the problem is on one line.
    """

    def __init__(self, source: str, message: str, *, line: int | None = None) -> None:
        self.source = source
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


class TransportError(EnergymonError):
    """The message broker could not be reached or refused an operation."""

    retriable = True


class StoreError(EnergymonError):
    """The time-series store failed a write or a query."""

    retriable = True


class UnreadableStoreError(StoreError):
    """The store answers, but is not one energymon can read back (neither InfluxDB's InfluxQL nor VictoriaMetrics)."""

    retriable = False


class NotifyError(EnergymonError):
    """A notifier could not deliver an alert."""

    retriable = True
