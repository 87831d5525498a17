"""Node-RED 4.x with node-red-contrib-modbus 5.23.3: install, settings, flow, command line.

Install: ``npm install --no-audit --no-fund node-red node-red-contrib-modbus@5.23.3`` in
``<cache>/nodered`` (node-red-contrib-modbus 5.45+ depends on a tarball outside the npm registry; with
node 20 npm picks node-red 4.1.x, as node-red 5 needs node >= 22.9).

The flow per device: a ``modbus-client`` (its own TCP connection) and a ``modbus-read`` of holding registers
0..59 every second; all reads feed one function node that decodes the 30 big-endian float32 values into one
JSON object, and one ``mqtt out`` (QoS 1) that publishes it on ``nr/<device>``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import TAGS, cache_dir

MODBUS_VERSION = "5.23.3"

DECODE_JS = f"""const regs = msg.payload;
const buf = Buffer.allocUnsafe(regs.length * 2);
for (let i = 0; i < regs.length; i++) buf.writeUInt16BE(regs[i], i * 2);
const out = {{}};
for (let j = 0; j < {TAGS}; j++) out['t' + (j < 10 ? '0' : '') + j] = buf.readFloatBE(j * 4);
return {{topic: 'nr/' + msg.topic, payload: out}};"""


def install_dir() -> Path:
    """The npm project folder Node-RED is installed in."""
    return cache_dir() / "nodered"


def executable() -> Path:
    """The ``node-red`` launcher."""
    return install_dir() / "node_modules" / ".bin" / "node-red"


def version() -> str | None:
    """Installed Node-RED version, or None."""
    pkg = install_dir() / "node_modules" / "node-red" / "package.json"
    mod = install_dir() / "node_modules" / "node-red-contrib-modbus" / "package.json"
    if not (pkg.exists() and mod.exists() and executable().exists()):
        return None
    if json.loads(mod.read_text())["version"] != MODBUS_VERSION:
        return None
    return str(json.loads(pkg.read_text())["version"])


def install(timeout: float = 900.0) -> str | None:
    """npm-install Node-RED and the pinned Modbus node; return None on success, else the reason."""
    if version() is not None:
        return None
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not installed (apt-get install nodejs npm)"
    folder = install_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "package.json").exists():
        (folder / "package.json").write_text('{"name": "energymon-bench-nodered", "private": true}\n')
    try:
        out = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "node-red", f"node-red-contrib-modbus@{MODBUS_VERSION}"],
            cwd=folder, capture_output=True, text=True, timeout=timeout, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"npm install node-red node-red-contrib-modbus@{MODBUS_VERSION} failed: {exc}"
    if out.returncode != 0 or version() is None:
        lines = [x for x in (out.stderr or out.stdout).splitlines() if x.strip() not in ("", "npm error")]
        key = [x for x in lines if " code " in x or "errno" in x or "404" in x] or lines[-2:]
        return f"npm install failed (rc {out.returncode}): {' | '.join(key[:3])}"
    return None


def write_settings(user_dir: Path, port: int) -> Path:
    """settings.js: editor on 127.0.0.1 only, no telemetry, no palette installs, warnings only."""
    user_dir.mkdir(parents=True, exist_ok=True)
    path = user_dir / "settings.js"
    path.write_text(
        "module.exports = {\n"
        f"  uiHost: '127.0.0.1',\n  uiPort: {port},\n"
        "  flowFile: 'flows.json',\n  credentialSecret: false,\n  flowFilePretty: false,\n"
        "  diagnostics: {enabled: false, ui: false},\n"
        "  telemetry: {enabled: false, updateNotification: false},\n"
        "  runtimeState: {enabled: false, ui: false},\n"
        "  editorTheme: {palette: {editable: false}, tours: false, projects: {enabled: false}},\n"
        "  externalModules: {autoInstall: false, palette: {allowInstall: false}, modules: {allowInstall: false}},\n"
        "  logging: {console: {level: 'warn', metrics: false, audit: false}},\n"
        "};\n",
        encoding="utf-8",
    )
    return path


def flow(devices: list[tuple[str, int]], mqtt_host: str, mqtt_port: int, *, rate_s: int = 1) -> list[dict[str, Any]]:
    """The flow for ``devices`` = [(name, port)]: client + read per device, one decoder, one MQTT out."""
    nodes: list[dict[str, Any]] = [{"id": "tab1", "type": "tab", "label": "bench", "disabled": False, "info": ""}]
    nodes.append({
        "id": "broker1", "type": "mqtt-broker", "name": "bench", "broker": mqtt_host, "port": str(mqtt_port),
        "clientid": "nodered-bench", "autoConnect": True, "usetls": False, "protocolVersion": "4",
        "keepalive": "60", "cleansession": True, "autoUnsubscribe": True,
        "birthTopic": "", "birthQos": "0", "birthPayload": "", "birthMsg": {},
        "closeTopic": "", "closeQos": "0", "closePayload": "", "closeMsg": {},
        "willTopic": "", "willQos": "0", "willPayload": "", "willMsg": {}, "userProps": "", "sessionExpiry": "",
    })
    nodes.append({
        "id": "decode1", "type": "function", "z": "tab1", "name": "float32 x30", "func": DECODE_JS,
        "outputs": 1, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [],
        "x": 400, "y": 40, "wires": [["mqttout1"]],
    })
    nodes.append({
        "id": "mqttout1", "type": "mqtt out", "z": "tab1", "name": "", "topic": "", "qos": "1", "retain": "false",
        "respTopic": "", "contentType": "", "userProps": "", "correl": "", "expiry": "", "broker": "broker1",
        "x": 600, "y": 40, "wires": [],
    })
    for i, (name, port) in enumerate(devices):
        nodes.append({
            "id": f"client{i}", "type": "modbus-client", "name": f"c-{name}", "clienttype": "tcp",
            "bufferCommands": True, "stateLogEnabled": False, "queueLogEnabled": False, "failureLogEnabled": True,
            "tcpHost": "127.0.0.1", "tcpPort": str(port), "tcpType": "DEFAULT",
            "serialPort": "/dev/ttyUSB", "serialType": "RTU-BUFFERD", "serialBaudrate": "9600",
            "serialDatabits": "8", "serialStopbits": "1", "serialParity": "none", "serialConnectionDelay": "100",
            "serialAsciiResponseStartDelimiter": "0x3A", "unit_id": "1", "commandDelay": "1",
            "clientTimeout": "1000", "reconnectOnTimeout": True, "reconnectTimeout": "2000",
            "parallelUnitIdsAllowed": True,
        })
        nodes.append({
            "id": f"read{i}", "type": "modbus-read", "z": "tab1", "name": "", "topic": name,
            "showStatusActivities": False, "logIOActivities": False, "showErrors": False, "unitid": "1",
            "dataType": "HoldingRegister", "adr": "0", "quantity": str(2 * TAGS), "rate": str(rate_s),
            "rateUnit": "s", "delayOnStart": False, "startDelayTime": "", "server": f"client{i}",
            "useIOFile": False, "ioFile": "", "useIOForPayload": False, "emptyMsgOnFail": False,
            "x": 150, "y": 40 + 20 * i, "wires": [["decode1"], []],
        })
    return nodes


def write_flow(user_dir: Path, devices: list[tuple[str, int]], mqtt_host: str, mqtt_port: int) -> Path:
    """Write flows.json into ``user_dir``."""
    path = user_dir / "flows.json"
    path.write_text(json.dumps(flow(devices, mqtt_host, mqtt_port)), encoding="utf-8")
    return path


def command(user_dir: Path, port: int) -> list[str]:
    """The Node-RED command line (the settings file sets the 127.0.0.1 binding)."""
    return [str(executable()), "--port", str(port), "--userDir", str(user_dir), "--settings",
            str(user_dir / "settings.js"), "--no-telemetry", "flows.json"]


if __name__ == "__main__":  # pragma: no cover - manual use: install only
    reason = install()
    print(reason or f"Node-RED {version()} installed in {install_dir()}")
    sys.exit(1 if reason else 0)
