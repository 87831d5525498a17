"""The ``email`` notifier: each alert record as a plain-text UTF-8 e-mail over SMTP (:mod:`smtplib`).

``security``: ``starttls`` (connect in clear, upgrade with STARTTLS, refuse to go on without it), ``tls``
(implicit TLS, port 465) or ``none``. The server certificate is checked against the system store or
``ca_file``. The password is read from the environment variable named by ``password_env`` when the notifier
is built, so it never sits in the plant file.

Retries: connection errors, timeouts, a dropped connection and 4xx SMTP replies (try again later) are retried;
5xx replies (bad recipient, authentication refused) are final and dead-lettered at once.

Subject: ``[energymon] FIRING critical: <summary> (<source>)``; the body lists every field and the headers
``X-Energymon-Alert`` (alert id) and ``X-Energymon-Version`` let mail rules sort and de-duplicate.
"""

from __future__ import annotations

import os
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from energymon.alerts.delivery import BackgroundNotifier, DeliveryError
from energymon.alerts.engine import Alert, AlertState
from energymon.alerts_config import EmailNotifier as EmailConfig
from energymon.errors import ConfigError, ConfigIssue
from energymon.metrics import PipelineMetrics

__all__ = ["EmailNotifier", "render_email"]


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def render_email(alert: Alert, *, from_addr: str, to: list[str], subject_prefix: str,
                 enterprise: str | None) -> EmailMessage:
    """The e-mail for one alert record."""
    status = "RESOLVED" if alert.state is AlertState.RESOLVED else "FIRING"
    if alert.event in ("escalated", "reminder"):
        status += f" ({alert.event})"
    msg = EmailMessage()
    msg["Subject"] = f"{subject_prefix} {status} {alert.severity}: {alert.summary} ({alert.source})".strip()
    msg["From"] = from_addr
    msg["To"] = ", ".join(to)
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="energymon")
    msg["X-Energymon-Alert"] = alert.id
    msg["X-Energymon-Version"] = str(alert.version)
    lines = [
        f"{status}: {alert.summary}",
        "",
        f"alert:      {alert.id}",
        f"enterprise: {enterprise or '-'}",
        f"severity:   {alert.severity}",
        f"audience:   {', '.join(alert.audience)}",
        f"value:      {alert.value if alert.value is not None else '-'}",
        f"threshold:  {alert.threshold if alert.threshold is not None else '-'}",
        f"started:    {_when(alert.started_ms)}",
        f"fired:      {_when(alert.fired_ms)}",
    ]
    if alert.escalated_ms is not None:
        lines.append(f"escalated:  {_when(alert.escalated_ms)}")
    if alert.resolved_ms is not None:
        lines.append(f"resolved:   {_when(alert.resolved_ms)}")
    if alert.acked_by is not None:
        lines.append(f"acknowledged by {alert.acked_by or '-'}: {alert.ack_comment}")
    lines += ["", f"version {alert.version}; times are event times, UTC."]
    msg.set_content("\n".join(lines) + "\n", charset="utf-8")
    return msg


class EmailNotifier(BackgroundNotifier):
    """Send alert records by e-mail from a background thread, with retries and a dead-letter file.

    Args:
        config: the ``email`` notifier from the plant file.
        dead_letter_path: JSON-lines file for records that could not be sent.
        enterprise: the enterprise's USCC, shown in each mail.
        metrics: stage ``notify`` counters (see :class:`~energymon.alerts.delivery.BackgroundNotifier`).
        **kw: queue and back-off settings of :class:`~energymon.alerts.delivery.BackgroundNotifier`.

    Raises:
        ConfigError: ``password_env`` names an environment variable that is not set or empty.
    """

    kind = "email"

    def __init__(
        self,
        config: EmailConfig,
        *,
        dead_letter_path: Path,
        enterprise: str | None = None,
        metrics: PipelineMetrics | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(
            config.id, severities=config.severities, audiences=config.audiences,
            dead_letter_path=dead_letter_path, max_retries=config.max_retries, metrics=metrics,
            **kw,
        )
        self.config = config
        self.enterprise = enterprise
        self._password: str | None = None
        if config.password_env is not None:
            password = os.environ.get(config.password_env)
            if not password:
                raise ConfigError("<environment>", [ConfigIssue(
                    f"alerts.notifiers[{config.id}].password_env",
                    f"environment variable {config.password_env} is not set or empty; it must hold the SMTP "
                    f"password of email notifier {config.id!r}",
                )])
            if not password.isascii():  # smtplib sends AUTH PLAIN/LOGIN credentials as ASCII only
                raise ConfigError("<environment>", [ConfigIssue(
                    f"alerts.notifiers[{config.id}].password_env",
                    f"the SMTP password in {config.password_env} has non-ASCII characters, which SMTP login "
                    "(smtplib) cannot send",
                )])
            self._password = password
        self._timeout_s = config.timeout_ms / 1000
        self._start()

    def _close_grace_s(self) -> float:
        return 4 * self._timeout_s

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.config.ca_file)

    def _deliver_once(self, alert: Alert) -> None:
        cfg = self.config
        msg = render_email(alert, from_addr=cfg.from_addr, to=cfg.to, subject_prefix=cfg.subject_prefix,
                           enterprise=self.enterprise)
        try:
            smtp: smtplib.SMTP
            if cfg.security == "tls":
                smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=self._timeout_s, context=self._context())
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=self._timeout_s)
            with smtp:
                if cfg.security == "starttls":
                    smtp.starttls(context=self._context())
                if cfg.username is not None and self._password is not None:
                    smtp.login(cfg.username, self._password)
                refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(f"every recipient refused: {exc.recipients}",
                                retriable=all(400 <= c < 500 for c in codes)) from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) \
                else str(exc.smtp_error)
            raise DeliveryError(f"SMTP {exc.smtp_code}: {text[:200]}",
                                retriable=400 <= exc.smtp_code < 500) from None
        except smtplib.SMTPNotSupportedError as exc:  # e.g. no STARTTLS offered: do not fall back to clear text
            raise DeliveryError(f"SMTP server: {exc}", retriable=False) from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(f"TLS certificate rejected: {exc.verify_message}", retriable=False) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}", retriable=True) from None
        if refused:
            # some recipients took it: retrying would send it twice to those; record the rest
            self._dead_letter(alert, f"some recipients refused: {refused}", attempts=1)
