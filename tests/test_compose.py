"""deploy/docker-compose.yml, the Dockerfile and deploy/compose/: checked without a Docker engine.

Structure: every service has an image or a build, dependencies and shared network namespaces point at
services that exist in the same profiles, bind-mounted files exist in the repository or are issued by
``deploy/compose/make-certs.sh``, host ports do not clash, every ``${VAR}`` is in ``.env.example``, the plant
files validate, and the Docker build context (after ``.dockerignore``) holds every package.

Behaviour: each energymon service's compose ``command`` runs unchanged as ``energymon <argv>`` except for the
values a container gets from its mounts and network, which are pointed at this machine:

* ``/etc/energymon/plant.yaml`` becomes a copy of the plant file the service mounts, in which the broker host
  (``mosquitto`` or ``emqx.energymon.local``) is 127.0.0.1 and the test broker's port, the certificate paths
  are the host files the service mounts there, the store URL is a VictoriaMetrics and the Modbus bus port is
  a free one;
* ``/var/lib/energymon`` (a named volume) becomes a temporary directory;
* the metrics port becomes a free port and ``--metrics-host 0.0.0.0`` becomes 127.0.0.1.

The broker is a real Mosquitto running the compose broker configuration (``deploy/compose/mosquitto.conf``
including ``deploy/mosquitto/tls.conf``) with the certificates and ACL from ``make-certs.sh``; the health
checks of the compose file run against the same processes. The TLS and ACL semantics themselves are
tested in tests/test_uplink_security.py.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from services import Mosquitto, VictoriaMetrics, free_port, require_binary

from energymon.cli import build_parser
from energymon.config import load_plant, parse_plant
from energymon.runtime import processor_client_id

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
CERTS_DIR = DEPLOY / "compose" / "certs"
MAKE_CERTS = DEPLOY / "compose" / "make-certs.sh"
ENV_EXAMPLE = DEPLOY / "compose" / ".env.example"

#: Files make-certs.sh issues (the CA key stays out of every container).
ISSUED = {
    "ca.pem", "ca.key", "server.pem", "server.key", "gw-line1.pem", "gw-line1.key", "gw-cluster.pem",
    "gw-cluster.key", "processor.pem", "processor.key", "energymon.acl",
}  # fmt: skip
#: Host names the plant files use for the broker; the server certificate must name each.
BROKER_HOSTS = {"mosquitto", "emqx.energymon.local"}
PLANT_IN_CONTAINER = "/etc/energymon/plant.yaml"
DATA_IN_CONTAINER = "/var/lib/energymon"
#: Bound on waiting for a process to come up or for data to arrive (a loaded 2-core machine).
TIMEOUT = 120.0


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


COMPOSE = _compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ENERGYMON = sorted(name for name, svc in SERVICES.items() if svc.get("image") == "energymon:local")


def _profiles(name: str) -> set[str]:
    return set(SERVICES[name].get("profiles", []))


def _bind_mounts(name: str) -> list[tuple[str, str]]:
    """(host path as written, container path) of every bind mount of a service."""
    out = []
    for spec in SERVICES[name].get("volumes", []):
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def _named_mounts(name: str) -> list[tuple[str, str]]:
    out = []
    for spec in SERVICES[name].get("volumes", []):
        source, target = spec.split(":")[:2]
        if not source.startswith((".", "/")):
            out.append((source, target))
    return out


def _host_path(source: str, certs: Path) -> Path:
    """A bind mount's host path; files under deploy/compose/certs come from ``certs`` (make-certs.sh output)."""
    path = (DEPLOY / source).resolve()
    if path.is_relative_to(CERTS_DIR):
        return certs / path.relative_to(CERTS_DIR)
    return path


def _command(name: str) -> list[str]:
    command = SERVICES[name]["command"]
    return shlex.split(command) if isinstance(command, str) else [str(x) for x in command]


def _make_certs(out: Path) -> subprocess.CompletedProcess[str]:
    require_binary("openssl")
    return subprocess.run(["sh", str(MAKE_CERTS), str(out)], capture_output=True, text=True, timeout=300, check=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compose") / "certs"
    _make_certs(out)
    return out


# --------------------------------------------------------------------------- structure


def test_every_service_has_an_image_or_a_build() -> None:
    for name, svc in SERVICES.items():
        assert "image" in svc or "build" in svc, name
    builders = [name for name in ENERGYMON if "build" in SERVICES[name]]
    assert builders, "no service builds energymon:local"
    for name in builders:
        build = SERVICES[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == ROOT / "Dockerfile", name
    # the image is built by services that run in every profile combination
    assert any(not _profiles(name) for name in builders)


def test_default_services_and_profiles() -> None:
    default = {name for name in SERVICES if not _profiles(name)}
    assert default == {
        "mosquitto", "influxdb", "grafana", "prometheus", "alertmanager", "energymon-processor", "energymon-gateway",
    }  # fmt: skip
    assert {name for name in SERVICES if _profiles(name) == {"simulators"}} == {"simulator"}
    cluster = {name for name in SERVICES if _profiles(name) == {"cluster"}}
    assert {"emqx1", "emqx2", "energymon-processor-1", "energymon-processor-2"} <= cluster
    assert set().union(*(_profiles(n) for n in SERVICES)) == {"simulators", "cluster"}
    for name in ("emqx1", "emqx2"):
        assert SERVICES[name]["image"].startswith("emqx/emqx:5.8."), "clustering needs the Apache-2.0 5.8 line"


def test_dependencies_exist_and_are_started_with_their_dependents() -> None:
    for name, svc in SERVICES.items():
        targets = dict(svc.get("depends_on", {}))
        mode = svc.get("network_mode", "")
        if mode.startswith("service:"):
            net = mode.removeprefix("service:")
            assert net in targets, f"{name}: network_mode {mode} needs depends_on {net}"
        for target, spec in targets.items():
            assert target in SERVICES, f"{name} depends on unknown service {target}"
            assert _profiles(target) <= _profiles(name) or not _profiles(target), (
                f"{name} depends on {target}, which only runs with profile {_profiles(target)}"
            )
            condition = spec["condition"]
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{name} waits for {target} to be healthy: no healthcheck"


def test_long_running_services_restart_and_have_health_checks() -> None:
    for name, svc in SERVICES.items():
        assert svc.get("restart") == "unless-stopped", name
        assert "healthcheck" in svc, name
        assert svc["healthcheck"]["test"][0] == "CMD", name


def test_host_ports_do_not_clash() -> None:
    seen: dict[tuple[str, int], str] = {}
    for name, svc in SERVICES.items():
        for spec in svc.get("ports", []):
            parts = str(spec).split(":")
            ip, port = (parts[0], int(parts[1])) if len(parts) == 3 else ("0.0.0.0", int(parts[0]))
            for other_ip in {ip, "0.0.0.0"} if ip != "0.0.0.0" else {"0.0.0.0", "127.0.0.1"}:
                key = (other_ip, port)
                assert key not in seen, f"{name} and {seen.get(key)} both publish port {port}"
            seen[(ip, port)] = name
    # only the brokers listen beyond the host itself
    public = {name for (ip, _), name in seen.items() if ip == "0.0.0.0"}
    assert public == {"mosquitto", "emqx1", "emqx2"}


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_every_variable_is_in_env_example_and_no_secret_is_in_the_file() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    referenced = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    assert referenced == set(_env_example()), "docker-compose.yml and compose/.env.example disagree"
    # every secret-looking setting takes its value from the environment
    for name, svc in SERVICES.items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if re.search(r"PASSWORD|TOKEN|COOKIE|SECRET", key):
                assert str(value).startswith("${") and ":?" in str(value), f"{name}: {key} must come from .env"


def test_env_example_matches_the_plant_stores() -> None:
    env = _env_example()
    for plant_file in ("plant.yaml", "cluster-plant.yaml"):
        store = load_plant(DEPLOY / "compose" / plant_file).processor.store
        assert store is not None and store.type == "influxdb"
        assert (store.org, store.bucket, store.token_env) == (env["INFLUX_ORG"], env["INFLUX_BUCKET"], "INFLUX_TOKEN")
        assert urlsplit(store.url).hostname == "influxdb"
    for name in ENERGYMON:
        if _command(name)[2] == "processor":
            assert "INFLUX_TOKEN" in SERVICES[name]["environment"], name


def test_influxdb_set_up_maps_the_database_the_plants_read_to_their_bucket(tmp_path: Path) -> None:
    """The stack's own set-up creates the DBRP mapping InfluxQL reads through (report, serve, uplink, Grafana)."""
    env = _env_example()
    mounts = dict((t, s) for s, t in _bind_mounts("influxdb"))
    init_dir = DEPLOY / mounts["/docker-entrypoint-initdb.d"]
    scripts = sorted(init_dir.glob("*.sh"))
    assert scripts, "no set-up script for the DBRP mapping"
    for plant_file in ("plant.yaml", "cluster-plant.yaml"):
        store = load_plant(DEPLOY / "compose" / plant_file).processor.store
        assert store is not None and store.type == "influxdb"
        assert store.server == "influxdb" and store.api == "v2"
        assert (store.database or store.bucket) == env["INFLUX_BUCKET"], plant_file
    # run the script as the image does, with an `influx` CLI on PATH that records its arguments
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "influx.log"
    (bin_dir / "influx").write_text(f'#!/bin/sh\necho "$@" >> {log}\n', encoding="utf-8")
    (bin_dir / "influx").chmod(0o755)
    environ = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DOCKER_INFLUXDB_INIT_ORG": env["INFLUX_ORG"],
               "DOCKER_INFLUXDB_INIT_BUCKET": env["INFLUX_BUCKET"], "DOCKER_INFLUXDB_INIT_BUCKET_ID": "0123abcd"}
    for script in scripts:
        subprocess.run(["sh", str(script)], env=environ, check=True, capture_output=True, timeout=60)
    created = [line.split() for line in log.read_text(encoding="utf-8").splitlines() if "create" in line]
    assert len(created) == 1
    args = created[0]
    assert args[:3] == ["v1", "dbrp", "create"]
    opts = dict(zip(args[3::2], args[4::2], strict=False))
    assert opts["--db"] == env["INFLUX_BUCKET"] and opts["--bucket-id"] == "0123abcd"
    assert opts["--rp"] == "autogen" and "--default" in args and opts["--org"] == env["INFLUX_ORG"]


def test_grafana_reads_the_store_the_plant_file_writes() -> None:
    """Grafana's provisioned InfluxDB data source is the processor's store: same server, org and bucket."""
    env = _env_example()
    mounts = dict((t, s) for s, t in _bind_mounts("grafana"))
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"]
    sources = yaml.safe_load((provisioning / "datasources" / "energymon.yml").read_text(encoding="utf-8"))
    (influx,) = [ds for ds in sources["datasources"] if ds["type"] == "influxdb"]
    grafana_env = SERVICES["grafana"]["environment"]

    def expand(value: str) -> str:  # Grafana expands ${VAR} from its environment, compose from .env
        for name, text in grafana_env.items():
            value = value.replace(f"${{{name}}}", env[text.split(":")[0].strip("${")] if text.startswith("${")
                                  else text)
        return value

    store = load_plant(DEPLOY / "compose" / "plant.yaml").processor.store
    assert store is not None and store.type == "influxdb"
    assert urlsplit(influx["url"]).netloc == urlsplit(store.url).netloc
    assert expand(influx["jsonData"]["organization"]) == store.org
    assert expand(influx["jsonData"]["defaultBucket"]) == store.bucket
    assert "influxdb" in SERVICES["grafana"]["depends_on"]


def test_bind_mounts_exist_in_the_repository_or_are_issued_by_make_certs(certs: Path) -> None:
    assert {p.name for p in certs.iterdir()} >= ISSUED
    for name in SERVICES:
        for source, target in _bind_mounts(name):
            host = _host_path(source, certs)
            assert host.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            if host.is_relative_to(certs):
                assert host.name in ISSUED - {"ca.key"}, f"{name} mounts {host.name}"


def test_named_volumes_are_declared_and_hold_the_energymon_state() -> None:
    declared = set(COMPOSE["volumes"])
    used = {source for name in SERVICES for source, _ in _named_mounts(name)}
    assert used == declared
    for name in ENERGYMON:
        args = build_parser().parse_args(_command(name))
        if args.command in {"gateway", "processor"}:
            assert str(args.data_dir) == DATA_IN_CONTAINER
            assert DATA_IN_CONTAINER in {t for _, t in _named_mounts(name)}, f"{name}: state not on a volume"
            # one volume per stateful service: outboxes and counter baselines are never shared
            own = [s for s, t in _named_mounts(name) if t == DATA_IN_CONTAINER]
            others = [s for n in ENERGYMON if n != name for s, t in _named_mounts(n) if t == DATA_IN_CONTAINER]
            assert not set(own) & set(others), name


def test_energymon_commands_parse_and_name_the_mounted_plant_file() -> None:
    for name in ENERGYMON:
        args = build_parser().parse_args(_command(name))
        assert str(args.config) == PLANT_IN_CONTAINER, name
        assert PLANT_IN_CONTAINER in {t for _, t in _bind_mounts(name)}, name
        if args.command in {"gateway", "processor"}:
            assert args.metrics_host == "0.0.0.0", f"{name}: Prometheus scrapes from another container"
            health = " ".join(SERVICES[name]["healthcheck"]["test"])
            assert f":{args.metrics_port}/metrics" in health, name


@pytest.mark.parametrize("plant_file", ["plant.yaml", "cluster-plant.yaml"])
def test_plant_files_validate(plant_file: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "energymon.cli", "validate", str(DEPLOY / "compose" / plant_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert ": OK" in done.stdout


def test_make_certs_issues_what_the_plants_and_brokers_need(certs: Path) -> None:
    def openssl(*args: str) -> str:
        return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True, timeout=60).stdout

    for pem in sorted(certs.glob("*.pem")):
        if pem.name != "ca.pem":
            assert f"{pem}: OK" in openssl("verify", "-CAfile", str(certs / "ca.pem"), str(pem))
    sans = openssl("x509", "-in", str(certs / "server.pem"), "-noout", "-ext", "subjectAltName")
    hosts = {urlsplit(load_plant(p).uplink.url).hostname for p in (DEPLOY / "compose").glob("*plant.yaml")}
    assert hosts <= BROKER_HOSTS
    for host in BROKER_HOSTS | {"emqx1.energymon.local", "emqx2.energymon.local", "localhost"}:
        assert f"DNS:{host}" in sans, host
    # a gateway's certificate CN is its gateway id, which the ACLs use as the user name
    for plant_file, cert in (("plant.yaml", "gw-line1.pem"), ("cluster-plant.yaml", "gw-cluster.pem")):
        gateway_id = load_plant(DEPLOY / "compose" / plant_file).gateway.id
        assert f"CN = {gateway_id}" in openssl("x509", "-in", str(certs / cert), "-noout", "-subject")
    # the Mosquitto ACL is the shipped one with the enterprise of compose/plant.yaml
    uscc = load_plant(DEPLOY / "compose" / "plant.yaml").enterprise.uscc
    acl = (certs / "energymon.acl").read_text(encoding="utf-8")
    rules = [line for line in acl.splitlines() if line and not line.startswith("#")]
    shipped = [line for line in (DEPLOY / "mosquitto" / "acl").read_text(encoding="utf-8").splitlines()
               if line and not line.startswith("#")]  # fmt: skip
    assert rules == [line.replace("ENTERPRISE", uscc) for line in shipped]
    # a second run keeps what exists (the broker keeps trusting the issued certificates)
    before = (certs / "processor.pem").read_bytes()
    _make_certs(certs)
    assert (certs / "processor.pem").read_bytes() == before


def test_emqx_cluster_configuration_matches_the_compose_file() -> None:
    conf = (DEPLOY / "emqx" / "emqx.conf").read_text(encoding="utf-8")
    assert re.search(r"^\s*shared_subscription_strategy = hash_topic$", conf, re.MULTILINE)
    assert re.search(r"^\s*peer_cert_as_username = cn$", conf, re.MULTILINE)
    seeds = re.search(r"static\.seeds = \[(.*)\]", conf)
    assert seeds is not None
    nodes = {SERVICES[n]["environment"]["EMQX_NODE__NAME"] for n in ("emqx1", "emqx2")}
    assert set(re.findall(r'"([^"]+)"', seeds.group(1))) == nodes
    for name in ("emqx1", "emqx2"):
        svc = SERVICES[name]
        assert svc["environment"]["EMQX_NODE__NAME"] == f"emqx@{svc['hostname']}"
        assert "emqx.energymon.local" in svc["networks"]["default"]["aliases"]
        mounted = {t for _, t in _bind_mounts(name)}
        for path in re.findall(r'"(/opt/emqx/etc/[^"]+)"', conf):
            assert path in mounted, f"{name}: emqx.conf reads {path}, which is not mounted"
    # the ACL is written for the enterprise of the cluster plant
    acl = (DEPLOY / "emqx" / "acl.conf").read_text(encoding="utf-8")
    uscc = load_plant(DEPLOY / "compose" / "cluster-plant.yaml").enterprise.uscc
    assert set(re.findall(r"energymon/v1/([^/\"]+)/", acl)) == {uscc}
    assert load_plant(DEPLOY / "compose" / "cluster-plant.yaml").processor.share_group is not None


def test_mosquitto_mounts_every_file_its_configuration_reads() -> None:
    mounted = {t for _, t in _bind_mounts("mosquitto")}
    for conf in ("compose/mosquitto.conf", "mosquitto/tls.conf"):
        text = (DEPLOY / conf).read_text(encoding="utf-8")
        for path in re.findall(r"^(?:cafile|certfile|keyfile|acl_file) (\S+)$", text, re.MULTILINE):
            assert path in mounted, f"{conf} reads {path}, not mounted"
        for path in re.findall(r"^include_dir (\S+)$", text, re.MULTILINE):
            assert any(t.startswith(path + "/") for t in mounted), path


def _ignored(rel: Path, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes ``rel`` (the patterns used there: names and ``**/name`` forms)."""
    import fnmatch

    parts = rel.parts
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(p, pattern[3:]) for p in parts):
                return True
        elif fnmatch.fnmatch(parts[0], pattern) or fnmatch.fnmatch(str(rel), pattern):
            return True
    return False


def test_docker_build_context_holds_every_package(tmp_path: Path) -> None:
    """The files `COPY . .` sees after .dockerignore build the same packages as the repository."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]  # fmt: skip
    assert not any(p.startswith("!") for p in patterns), "negations are not modelled here"
    context = tmp_path / "context"
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if _ignored(rel, patterns) or any(_ignored(Path(*rel.parts[:i]), patterns) for i in range(1, len(rel.parts))):
            continue
        target = context / rel
        if path.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(path))
        elif path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file() and not any(p.is_symlink() for p in path.parents if p != ROOT and ROOT in p.parents):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())

    def build_py(src: Path, out: Path) -> set[str]:
        subprocess.run(
            [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py", "--build-lib", str(out)],
            cwd=src, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "__pycache__" not in p.parts}

    from_context = build_py(context, tmp_path / "lib-context")
    from_repo = build_py(ROOT, tmp_path / "lib-repo")
    assert from_context == from_repo
    assert "energymon/cli.py" in from_context
    assert any(p.startswith("energymon/collectors/meter_library/") for p in from_context)
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["energymon"]' in dockerfile
    assert re.search(r"^USER energymon$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.MULTILINE)


# --------------------------------------------------------------------------- the commands, run


def _container_paths(name: str, certs: Path) -> dict[str, Path]:
    return {target: _host_path(source, certs) for source, target in _bind_mounts(name)}


def _broker_config(certs: Path, workdir: Path, tls_port: int, health_port: int, acl: Path | None = None) -> str:
    """deploy/compose/mosquitto.conf with the included conf.d and every mounted path mapped to this host
    (the ACL file to ``acl`` if given)."""
    mounts = _container_paths("mosquitto", certs)
    if acl is not None:
        mounts["/etc/mosquitto/energymon.acl"] = acl
    named = dict((t, s) for s, t in _named_mounts("mosquitto"))
    for target in named:
        mounts[target] = workdir / "volume-data"
        mounts[target].mkdir(parents=True, exist_ok=True)

    def mapped(text: str) -> str:
        for container in sorted(mounts, key=len, reverse=True):
            text = text.replace(container, str(mounts[container]))
        return text

    main = mounts.pop("/mosquitto/config/mosquitto.conf").read_text(encoding="utf-8")
    conf_d = workdir / "conf.d"
    conf_d.mkdir()
    for container, host in mounts.items():
        if container.startswith("/etc/mosquitto/conf.d/"):
            text, n = re.subn(r"^listener 8883$", f"listener {tls_port} 127.0.0.1", host.read_text("utf-8"), flags=re.M)
            assert n == 1
            (conf_d / Path(container).name).write_text(mapped(text), encoding="utf-8")
    main, n = re.subn(r"^listener 1883 127\.0\.0\.1$", f"listener {health_port} 127.0.0.1", main, flags=re.M)
    assert n == 1
    main = re.sub(r"^include_dir /etc/mosquitto/conf\.d$", f"include_dir {conf_d}", main, flags=re.M)
    return mapped(main)


@dataclass
class Broker:
    mosquitto: Mosquitto
    tls_port: int
    health_port: int


def _start_broker(certs: Path, workdir: Path, acl: Path | None = None) -> Broker:
    tls_port, health_port = free_port(), free_port()
    conf = _broker_config(certs, workdir, tls_port, health_port, acl)
    broker = Mosquitto(extra_conf=conf)
    broker.start()
    return Broker(broker, tls_port, health_port)


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] = field(init=False)
    metrics_port: int | None = None

    def start(self, env: dict[str, str]) -> Proc:
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "energymon.cli", *self.argv], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        return self

    def tail(self) -> str:
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])

    def stop(self) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"{self.name} did not stop within 60 s of SIGTERM:\n{self.tail()}") from None


def _wait(what: str, check: Callable[[], bool], procs: list[Proc], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for p in procs:
            if p.popen.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.popen.returncode} while waiting for {what}:\n{p.tail()}")
        if time.monotonic() > deadline:
            tails = "\n\n".join(f"{p.name}:\n{p.tail()}" for p in procs)
            raise AssertionError(f"{what}: not within {timeout} s\n{tails}")
        time.sleep(0.25)


def _metrics_answer(port: int) -> bool:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and "energymon_received_total" in response.text


def _received(port: int, stage: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text
    found = re.search(rf'^energymon_received_total\{{stage="{stage}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _test_plant(name: str, certs: Path, broker: Broker, vm: VictoriaMetrics, bus_port: int, out: Path) -> Path:
    """The plant file service ``name`` mounts, with hosts, ports and certificate paths of this machine."""
    mounts = _container_paths(name, certs)
    data = yaml.safe_load(mounts[PLANT_IN_CONTAINER].read_text(encoding="utf-8"))
    uplink = data["uplink"]
    assert urlsplit(uplink["url"]).hostname in BROKER_HOSTS
    uplink["url"] = f"mqtts://127.0.0.1:{broker.tls_port}"
    if any(t.startswith("/etc/energymon/tls/") for t in mounts):  # the simulator mounts no certificates
        for key in ("ca_file", "cert_file", "key_file"):
            uplink["tls"][key] = str(mounts[uplink["tls"][key]])
    data["processor"]["store"]["url"] = vm.url
    for notifier in data["alerts"]["notifiers"]:
        notifier["url"] = f"http://127.0.0.1:{free_port()}"
    for bus in data["buses"]:
        bus["port"] = bus_port
    hostname = SERVICES[name].get("hostname")
    if hostname is not None and data["processor"].get("client_id") is None:
        # the processor's MQTT client id depends on the host name: the container's, not this machine's
        with mock.patch("socket.gethostname", return_value=hostname):
            data["processor"]["client_id"] = processor_client_id(parse_plant(yaml.safe_dump(data)))
    out.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return out


def _argv(name: str, plant: Path, data_dir: Path, metrics_port: int) -> list[str]:
    argv = _command(name)
    out = []
    for i, arg in enumerate(argv):
        prev = argv[i - 1] if i else ""
        if arg == PLANT_IN_CONTAINER:
            out.append(str(plant))
        elif arg == DATA_IN_CONTAINER:
            out.append(str(data_dir))
        elif prev == "--metrics-port":
            out.append(str(metrics_port))
        elif prev == "--metrics-host":
            assert arg == "0.0.0.0"
            out.append("127.0.0.1")
        else:
            out.append(arg)
    return out


def _health(name: str, replacements: dict[str, str]) -> list[str]:
    """The service's compose health check command with ports replaced; ``python`` is this interpreter."""
    test = SERVICES[name]["healthcheck"]["test"][1:]
    argv = []
    for arg in test:
        for old, new in replacements.items():
            arg = arg.replace(old, new)
        argv.append(arg)
    if argv[0] == "python":
        argv[0] = sys.executable
    if argv[0] == "mosquitto_pub":
        argv[0] = require_binary("mosquitto_pub")
    return argv


class Stack:
    """Run the compose commands of ``names`` (simulators first) against the test broker and store."""

    def __init__(self, names: list[str], certs: Path, broker: Broker, vm: VictoriaMetrics, tmp: Path) -> None:
        self.bus_port = free_port()
        self.procs: dict[str, Proc] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUX_")}
        env["INFLUX_TOKEN"] = "compose-test-token"
        order = sorted(names, key=lambda n: _command(n)[2] != "simulate")
        for name in order:
            plant = _test_plant(name, certs, broker, vm, self.bus_port, tmp / f"{name}.yaml")
            argv = _argv(name, plant, tmp / f"{name}-data", free_port())
            proc = Proc(name, argv, tmp / f"{name}.log")
            args = build_parser().parse_args(argv)
            proc.metrics_port = getattr(args, "metrics_port", None)
            self.procs[name] = proc.start(env)
            if args.command == "simulate":
                health = _health(name, {"15020": str(self.bus_port)})
                _wait(f"{name} health check", lambda h=health: _ok(h), list(self.procs.values()))

    def stop(self) -> dict[str, int]:
        codes = {}
        for name in reversed(list(self.procs)):
            codes[name] = self.procs[name].stop()
        return codes


def _ok(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


@pytest.mark.integration
def test_broker_configuration_runs_and_its_health_check_passes(certs: Path, tmp_path: Path) -> None:
    broker = _start_broker(certs, tmp_path)
    try:
        assert _ok(_health("mosquitto", {"1883": str(broker.health_port)}))
        # the TLS listener of deploy/mosquitto/tls.conf completes a handshake with an issued client certificate
        context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        context.load_cert_chain(str(certs / "processor.pem"), str(certs / "processor.key"))
        with (
            socket.create_connection(("127.0.0.1", broker.tls_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="mosquitto") as tls,
        ):
            assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        assert "Error" not in broker.mosquitto.log_tail(200)
    finally:
        broker.mosquitto.stop()


def _readings(vm: VictoriaMetrics, uscc: str) -> list[dict[str, Any]]:
    return [s for s in vm.export('{__name__="reading_value"}') if s["metric"].get("enterprise", uscc) == uscc]


@pytest.mark.integration
def test_default_stack_commands_run_a_plant_end_to_end(certs: Path, tmp_path: Path) -> None:
    """simulator, energymon-gateway and energymon-processor: Modbus -> TLS Mosquitto -> VictoriaMetrics."""
    names = ["simulator", "energymon-gateway", "energymon-processor"]
    uscc = load_plant(DEPLOY / "compose" / "plant.yaml").enterprise.uscc
    broker = _start_broker(certs, tmp_path / "broker")
    vm = VictoriaMetrics().start()
    stack: Stack | None = None
    try:
        stack = Stack(names, certs, broker, vm, tmp_path)
        procs = list(stack.procs.values())
        for name in ("energymon-gateway", "energymon-processor"):
            proc = stack.procs[name]
            assert proc.metrics_port is not None
            _wait(f"{name} metrics", lambda p=proc.metrics_port: _metrics_answer(p), procs)
            health = _health(name, {"9108": str(proc.metrics_port), "9109": str(proc.metrics_port)})
            assert _ok(health), f"{name}: compose health check failed"
        _wait("readings of every meter in VictoriaMetrics",
              lambda: {s["metric"]["meter"] for s in _readings(vm, uscc)} >= {"incoming", "gas_main", "clinker_scale"},
              procs)  # fmt: skip
        assert _received(stack.procs["energymon-processor"].metrics_port or 0, "processor") > 0
        codes = stack.stop()
        stack = None
        assert codes == dict.fromkeys(names, 0)
    finally:
        if stack is not None:
            stack.stop()
        vm.stop()
        broker.mosquitto.stop()


@pytest.mark.integration
def test_cluster_profile_commands_share_the_readings(certs: Path, tmp_path: Path) -> None:
    """simulator-cluster, energymon-gateway-cluster and both processors with processor.share_group.

    EMQX cannot run here, so the broker is the compose Mosquitto with the shipped ACL written for the cluster
    plant's enterprise: the commands, plant file, certificates and the shared subscription are the same.
    """
    names = ["simulator-cluster", "energymon-gateway-cluster", "energymon-processor-1", "energymon-processor-2"]
    uscc = load_plant(DEPLOY / "compose" / "cluster-plant.yaml").enterprise.uscc
    shipped = (DEPLOY / "mosquitto" / "acl").read_text(encoding="utf-8")
    acl = tmp_path / "cluster.acl"
    acl.write_text(
        "\n".join(line if line.startswith("#") else line.replace("ENTERPRISE", uscc) for line in shipped.splitlines()),
        encoding="utf-8",
    )
    broker = _start_broker(certs, tmp_path / "broker", acl=acl)
    vm = VictoriaMetrics().start()
    stack: Stack | None = None
    try:
        stack = Stack(names, certs, broker, vm, tmp_path)
        procs = list(stack.procs.values())
        for name in names[1:]:
            port = stack.procs[name].metrics_port
            assert port is not None
            _wait(f"{name} metrics", lambda p=port: _metrics_answer(p), procs)
        _wait("readings in VictoriaMetrics", lambda: len(_readings(vm, uscc)) > 0, procs)
        total = sum(_received(stack.procs[n].metrics_port or 0, "processor") for n in names[2:])
        assert total > 0
        codes = stack.stop()
        stack = None
        assert codes == dict.fromkeys(names, 0)
    finally:
        if stack is not None:
            stack.stop()
        vm.stop()
        broker.mosquitto.stop()


def test_processors_of_one_share_group_have_distinct_client_ids() -> None:
    """Each member of a shared subscription needs its own persistent session: distinct container host names."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in ENERGYMON:
        if _command(name)[2] != "processor":
            continue
        plant = load_plant(_host_path(dict((t, s) for s, t in _bind_mounts(name))[PLANT_IN_CONTAINER], CERTS_DIR))
        with mock.patch("socket.gethostname", return_value=SERVICES[name]["hostname"]):
            groups.setdefault((plant.enterprise.uscc, processor_client_id(plant)), []).append(name)
    assert all(len(names) == 1 for names in groups.values()), groups


def test_prometheus_in_the_stack_scrapes_the_services_on_their_metrics_ports() -> None:
    """The compose Prometheus config is valid, and every target is a service whose command serves that port."""
    config_path = DEPLOY / "compose" / "prometheus.yml"
    assert ("./compose/prometheus.yml", "/etc/prometheus/prometheus.yml") in [
        (src, dst.removesuffix(":ro")) for src, dst in _bind_mounts("prometheus")
    ]
    done = subprocess.run(["promtool", "check", "config", "--syntax-only", str(config_path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    services = COMPOSE["services"]
    targets: list[tuple[str, int]] = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets += [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in static["targets"]]
        for sd in job.get("dns_sd_configs", []):
            targets += [(name, int(sd["port"])) for name in sd["names"]]
    assert targets
    for host, port in targets:
        assert host in services, f"{host} is not a compose service"
        if host.startswith("energymon-"):
            argv = _command(host)
            assert argv[argv.index("--metrics-port") + 1] == str(port), host
    am = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert all(t.split(":")[0] in services for t in am)
