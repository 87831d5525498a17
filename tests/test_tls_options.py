"""The MQTT TLS options against a real Mosquitto TLS listener, with certificates made in the test.

* a certificate for another host name is refused with the check on, and the cause is logged once;
  ``check_hostname: false`` accepts it (the chain is still verified);
* a self-signed certificate from a CA nobody trusts is refused even with ``check_hostname: false``, and accepted
  only with ``insecure_disable_verification: true``, which is logged as a warning;
* the old ``insecure_skip_verify`` key is refused with a message naming both new keys.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from plants import USCC
from services import Mosquitto, free_port

from energymon.config import TlsConfig, parse_plant
from energymon.errors import ConfigError, TransportError
from energymon.transport import MqttTransport

T = TypeVar("T")
TIMEOUT = 30.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 180)

    return asyncio.run(bounded())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _cert(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey, *,
          ca: bool, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer, hashes.SHA256())


class Certs:
    """A trusted CA with a server certificate for ``broker.invalid`` only (not 127.0.0.1), and a self-signed
    certificate for 127.0.0.1 that no CA vouches for."""

    def __init__(self, root: Path) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("energymon-test-ca", "energymon-test-ca", ca_key, ca_key, ca=True)
        self.ca_file = root / "ca.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = _cert("broker.invalid", "energymon-test-ca", server_key, ca_key, ca=False,
                       sans=[x509.DNSName("broker.invalid")])
        self.wrong_host_cert = root / "wrong-host.pem"
        self.wrong_host_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        self.wrong_host_key = root / "wrong-host.key"
        _write_key(server_key, self.wrong_host_key)
        own_key = ec.generate_private_key(ec.SECP256R1())
        own = _cert("127.0.0.1", "127.0.0.1", own_key, own_key, ca=True,
                    sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        self.self_signed_cert = root / "self-signed.pem"
        self.self_signed_cert.write_bytes(own.public_bytes(serialization.Encoding.PEM))
        self.self_signed_key = root / "self-signed.key"
        _write_key(own_key, self.self_signed_key)


@pytest.fixture
def tls_brokers(tmp_path: Path) -> Iterator[tuple[Certs, int, int]]:
    """One Mosquitto with two TLS listeners: the wrong-host-name certificate, and the self-signed one."""
    certs = Certs(tmp_path)
    wrong_host, self_signed = free_port(), free_port()
    broker = Mosquitto(extra_conf=(
        f"listener {wrong_host} 127.0.0.1\ncertfile {certs.wrong_host_cert}\nkeyfile {certs.wrong_host_key}\n"
        f"listener {self_signed} 127.0.0.1\ncertfile {certs.self_signed_cert}\nkeyfile {certs.self_signed_key}\n"
    ))
    broker.start()
    try:
        yield certs, wrong_host, self_signed
    finally:
        broker.stop()


def client(port: int, tls: TlsConfig, name: str, timeout: float = TIMEOUT) -> MqttTransport:
    return MqttTransport("127.0.0.1", port, client_id=name, tls=tls, connect_timeout_secs=timeout,
                         publish_timeout_secs=timeout, reconnect_min_secs=1, reconnect_max_secs=1)


async def refused(port: int, tls: TlsConfig, name: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Try to connect until paho failed three times; return the TLS error lines logged for this client."""
    transport = client(port, tls, name, timeout=0.5)
    await transport.connect()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while transport.connect_failures < 3 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert transport.connect_failures >= 3 and not transport.connected
    with pytest.raises(TransportError):
        await asyncio.wait_for(transport.publish("tls/x", b"never"), 2 * TIMEOUT)
    await transport.close()
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.ERROR and "TLS handshake" in r.getMessage() and repr(name) in r.getMessage()]


async def accepted(port: int, tls: TlsConfig, name: str) -> None:
    transport = client(port, tls, name)
    await transport.connect()
    assert transport.connected
    await transport.publish("tls/ok", b"through")
    await transport.close()


@pytest.mark.integration
def test_host_name_check(tls_brokers: tuple[Certs, int, int], caplog: pytest.LogCaptureFixture) -> None:
    certs, wrong_host, _ = tls_brokers
    caplog.set_level(logging.INFO, logger="energymon.transport")

    async def scenario() -> None:
        lines = await refused(wrong_host, TlsConfig(ca_file=certs.ca_file), "tls-name-checked", caplog)
        assert len(lines) == 1, lines  # logged once, not at every retry
        assert "certificate rejected" in lines[0] and "127.0.0.1" in lines[0]
        assert "Hostname mismatch" in lines[0] or "IP address mismatch" in lines[0]
        not_reachable = [r.getMessage() for r in caplog.records if "not reachable" in r.getMessage()]
        assert not_reachable and "certificate rejected" in not_reachable[0]  # the cause, not just "not reachable"
        await accepted(wrong_host, TlsConfig(ca_file=certs.ca_file, check_hostname=False), "tls-name-skipped")

    run(scenario())


@pytest.mark.integration
def test_unknown_ca(tls_brokers: tuple[Certs, int, int], caplog: pytest.LogCaptureFixture) -> None:
    certs, _, self_signed = tls_brokers
    caplog.set_level(logging.INFO, logger="energymon.transport")

    async def scenario() -> None:
        # the host name matches, but nobody vouches for the certificate: the chain check refuses it
        for name, tls in (("tls-chain-checked", TlsConfig(ca_file=certs.ca_file)),
                          ("tls-chain-no-name", TlsConfig(ca_file=certs.ca_file, check_hostname=False)),
                          ("tls-system-store", TlsConfig())):
            lines = await refused(self_signed, tls, name, caplog)
            assert len(lines) == 1 and "certificate rejected" in lines[0], lines
            assert "self-signed" in lines[0] or "self signed" in lines[0], lines
        caplog.clear()
        await accepted(self_signed, TlsConfig(insecure_disable_verification=True), "tls-unverified")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("NOT verified" in w and "insecure_disable_verification" in w for w in warnings), warnings

    run(scenario())


def plant_with_uplink_tls(tls_yaml: str) -> str:
    return (f"enterprise: {{uscc: {USCC}, name: 测试, industry_code: C3011}}\n"
            f"uplink:\n  url: mqtts://broker.example:8883\n  tls:\n    {tls_yaml}\n")


def test_old_skip_verify_key_is_refused_with_the_new_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_plant(plant_with_uplink_tls("insecure_skip_verify: true"), "plant.yaml")
    text = str(exc.value)
    assert "plant.yaml:" in text and "uplink.tls" in text
    assert "check_hostname: false" in text and "insecure_disable_verification: true" in text
    with pytest.raises(ConfigError, match="ignores ca_file"):
        parse_plant(plant_with_uplink_tls("insecure_disable_verification: true\n    ca_file: ca.pem"), "p.yaml")
    plant = parse_plant(plant_with_uplink_tls("check_hostname: false"), "plant.yaml")
    assert plant.uplink.tls is not None and not plant.uplink.tls.check_hostname


def test_plain_http_platform_url_is_refused_unless_allowed(tmp_path: Path) -> None:
    from test_provincial_uplink import make_plant, plant_text

    text = plant_text(tmp_path, "http://platform.example.gov.cn/YNEnergy/")
    refused_text = text.replace("  allow_insecure_http: true\n", "")
    assert refused_text != text
    with pytest.raises(ConfigError) as exc:
        parse_plant(refused_text, "plant.yaml")
    message = str(exc.value)
    assert "plant.yaml:" in message and "provincial" in message and "clear text" in message
    assert "allow_insecure_http: true" in message
    assert make_plant(tmp_path, "http://127.0.0.1:1/p/").provincial is not None  # said so explicitly
    https = parse_plant(refused_text.replace("http://", "https://"), "plant.yaml")
    assert https.provincial is not None and not https.provincial.allow_insecure_http


def test_plain_http_profile_url_is_refused_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_provincial_uplink import make_plant

    from energymon.clock import ManualClock
    from energymon.gateway.provincial.profile import load_profile
    from energymon.gateway.provincial.service import UplinkService

    plant = make_plant(tmp_path, "https://platform.example.gov.cn/p/")
    assert plant.provincial is not None
    plant = plant.model_copy(update={"provincial": plant.provincial.model_copy(
        update={"base_url": None, "allow_insecure_http": False})})
    profile = load_profile("yunnan").model_copy(update={"base_url": "http://platform.example.gov.cn/p/"})
    with pytest.raises(ConfigError, match="clear text"):
        UplinkService(plant, clock=ManualClock(datetime(2026, 3, 1, tzinfo=UTC)), password="x", profile=profile)
