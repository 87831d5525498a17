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
from energymon.alerts.payload import PayloadContext, alert_payload
from energymon.alerts_config import EmailNotifier as EmailConfig
from energymon.errors import ConfigError, ConfigIssue
from energymon.metrics import PipelineMetrics

__all__ = ["EmailNotifier", "render_email"]


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


_STATUS_ZH = {"firing": "告警", "resolved": "恢复", "escalated": "升级", "reminder": "提醒", "acknowledged": "已确认",
              "rule_removed": "规则已删除"}


_HANDLING_ZH = {"open": "未处理", "acknowledged": "已确认", "resolved": "已恢复"}


def _amount(value: Any, unit: Any) -> str:
    if value is None:
        return "-"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}" if unit else text


def render_email(alert: Alert, *, from_addr: str, to: list[str], subject_prefix: str,
                 enterprise: str | None, delivery_id: str = "", context: PayloadContext | None = None) -> EmailMessage:
    """The e-mail for one alert record (Chinese first; every field of the payload schema in the body)."""
    ctx = context if context is not None else PayloadContext(enterprise_code=enterprise)
    p = alert_payload(alert, delivery_id=delivery_id or None, context=ctx)
    status = "RESOLVED" if alert.state is AlertState.RESOLVED else "FIRING"
    event = alert.event or alert.state.value
    if event in ("escalated", "reminder", "acknowledged"):
        status += f" ({event})"
    zh = _STATUS_ZH.get(event, event)
    msg = EmailMessage()
    tag = f"{zh}·{p['category_name']}" if p["rule_kind"] is not None else zh
    subject = f"{subject_prefix} 【{tag}】{status} {alert.severity}: {alert.summary} ({p['source_name']})"
    msg["Subject"] = subject.strip()
    msg["From"] = from_addr
    msg["To"] = ", ".join(to)
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain="energymon")
    msg["X-Energymon-Alert"] = alert.id
    msg["X-Energymon-Version"] = str(alert.version)
    if delivery_id:
        msg["X-Energymon-Delivery"] = delivery_id
    local = p["timezone"] is not None

    def when(name: str) -> str:
        utc = _when(getattr(alert, f"{name}_ms"))
        return f"{p[f'{name}_local'][:19]} ({p['timezone']}) / {utc}" if local and p[f"{name}_local"] else utc

    lines = [
        f"{zh} {status}：{alert.summary}",
        "",
        f"类别 category:    {p['category_name']} ({p['category']})",
        f"企业 enterprise:  {p['enterprise_name'] or '-'} ({ctx.enterprise_code or '-'})",
        f"对象 source:      {p['source_name']} ({alert.source})",
        f"告警 alert:       {alert.id}",
        f"级别 severity:    {alert.severity}",
        f"受众 audience:    {', '.join(alert.audience)}",
        f"数值 value:       {_amount(alert.value, p['unit'])}",
        f"阈值 threshold:   {_amount(alert.threshold, p['threshold_unit'])}",
        f"持续 for:         {_amount(p['for_secs'], 's')}",
        f"开始 started:     {when('started')}",
        f"触发 fired:       {when('fired')}",
    ]
    if p["outage_began_ms"] is not None:
        lines.append(f"中断自 last good: {p['outage_began_local'] or p['outage_began_at']}")
    if alert.escalated_ms is not None:
        lines.append(f"升级 escalated:   {when('escalated')}")
    if alert.resolved_ms is not None:
        lines.append(f"恢复 resolved:    {when('resolved')}")
    if p["provincial"]:
        prov = p["provincial"]
        items = ", ".join(f"{i['id']} {i['name']}" for i in prov["data_items"]) or "-"
        lines.append(f"省平台 provincial: 计量器具 {', '.join(prov['gauges']) or '-'}; 采集项 {items}")
    lines.append(f"处理 handling:    {_HANDLING_ZH.get(p['handling'], p['handling'])} ({p['handling']})")
    if alert.acked_by is not None:
        lines.append(f"确认 acknowledged by {alert.acked_by or '-'} at {when('acked')}: {alert.ack_comment}")
    lines += ["", f"version {alert.version}; schema {p['schema_version']}; delivery {delivery_id or '-'};"
              " times are event times."]
    msg.set_content("\n".join(lines) + "\n", charset="utf-8")
    return msg


class EmailNotifier(BackgroundNotifier):
    """Send alert records by e-mail from a background thread, with retries and a dead-letter file.

    Args:
        config: the ``email`` notifier from the plant file.
        dead_letter_path: JSON-lines file for records that could not be sent.
        enterprise: the enterprise's USCC, shown in each mail.
        context: what the mail says about the plant (names, units, codes, local time).
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
        context: PayloadContext | None = None,
        **kw: Any,
    ) -> None:
        kw.setdefault("retry_for_s", config.retry_for_secs)
        kw.setdefault("backoff_cap_s", config.backoff_max_secs)
        kw.setdefault("max_in_flight", config.max_in_flight)
        super().__init__(
            config.id, severities=config.severities, audiences=config.audiences,
            dead_letter_path=dead_letter_path, max_retries=config.max_retries, metrics=metrics,
            **kw,
        )
        self.config = config
        self.enterprise = enterprise
        self.context = context if context is not None else PayloadContext(enterprise_code=enterprise)
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

    def _payload(self, alert: Alert, delivery_id: str) -> dict[str, Any]:
        return alert_payload(alert, delivery_id=delivery_id, context=self.context)

    def _deliver_once(self, alert: Alert, delivery_id: str) -> None:
        cfg = self.config
        msg = render_email(alert, from_addr=cfg.from_addr, to=cfg.to, subject_prefix=cfg.subject_prefix,
                           enterprise=self.enterprise, delivery_id=delivery_id, context=self.context)
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
            self.dead_letter_record(alert, delivery_id, f"some recipients refused: {refused}", attempts=1)
