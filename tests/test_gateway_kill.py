"""kill -9 safety: the real gateway (``energymon gateway``) in a child process, polling a simulated Modbus plant
(``energymon simulate``, another child process) and publishing to a real Mosquitto, is SIGKILLed at random
(seeded) moments 50 times in a row during a steady flow and restarted after each kill. An independent subscriber
records every batch. At the end:

* every sequence number the outbox ever committed (they are dense: AUTOINCREMENT, and a transaction cut by the
  kill is rolled back with its number) arrived at least once, so nothing committed was lost;
* every batch found in the outbox file right after a kill arrived, with the same readings;
* deduplicated by (gateway, seq), every poll tick arrived exactly once, and a re-sent batch is byte-identical;
* the counter intervals the gateway computed at the edge chain without a gap or an overlap across every kill:
  each counter reading after the first closes exactly the interval since the reading before it (its baseline
  is committed with its batch), so the booked energy is exactly the last reading minus the first.

Starting a Python process costs ~0.6 s of imports, too slow for 50 restarts in a minute, so a small fork server
imports energymon once and forks a fresh child per run, which runs ``energymon.cli.main(["gateway", ...])``:
the process killed is a real, separate gateway process with its own connections and outbox handle.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from capture import ReadingsCapture
from plants import modbus_plant
from services import Mosquitto, free_port

from energymon.schema import decode_batch

pytestmark = pytest.mark.integration

KILLS = 50
SEED = 20250306
USCC = "91530102MA6K7LQ8RH"

METERS = [("kiln_drive", 3, "kiln"), ("raw_mill", 2, "kiln")]

# Imports energymon once, then forks one gateway per "spawn" line; "wait PID" reaps it and prints its status.
FORK_SERVER = r"""
import os, sys
import energymon.cli, energymon.runtime, energymon.gateway.gateway, energymon.collectors.modbus, energymon.transport
from energymon.cli import main
argv, log = sys.argv[1:-1], sys.argv[-1]
print("ready", flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "spawn":
        pid = os.fork()
        if pid == 0:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.dup2(fd, 1); os.dup2(fd, 2)
            null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0)
            try:
                code = main(argv)
            except BaseException:
                import traceback; traceback.print_exc(); code = 99
            os._exit(code)
        print(pid, flush=True)
    elif cmd[0] == "wait":
        _, status = os.waitpid(int(cmd[1]), 0)
        print(status, flush=True)
    else:
        break
"""


class SlowLink:
    """A TCP proxy adding ``delay_s`` each way (a slow uplink): PUBACKs lag, so kills land with batches in flight."""

    def __init__(self, target_port: int, delay_s: float = 0.04) -> None:
        self.delay_s = delay_s
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()


def wait_for(condition: Callable[[], bool], what: str, log: Path, timeout_s: float = 300.0) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` and the gateway log's tail after a generous time
    (a bound for a hung gateway, not a speed requirement)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}\n{log.read_text()[-3000:] if log.exists() else ''}"
        time.sleep(0.02)


def read_outbox(path: Path) -> tuple[int, dict[int, bytes]]:
    """(highest sequence number ever committed, {seq: payload} still waiting), read as a restart would."""
    if not path.exists():
        return 0, {}
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        rows = {int(s): bytes(p) for s, p in db.execute("SELECT seq, payload FROM outbox")}
    except sqlite3.OperationalError:  # killed before the tables were created
        return 0, {}
    finally:
        db.close()
    return (int(row[0]) if row else 0), rows


@pytest.fixture
def simulator(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Path]:
    """A plant file whose uplink is Mosquitto behind a slow link, with its simulated Modbus meters served by
    `energymon simulate` in a child process."""
    link = SlowLink(mosquitto.port)
    plant = tmp_path / "plant.yaml"
    plant.write_text(modbus_plant(name="断电测试厂", gateway="gw-kill", modbus_port=free_port(),
                                  mqtt_url=f"mqtt://127.0.0.1:{link.port}", meters=METERS, poll_s=0.25, uscc=USCC,
                                  timeout_ms=100, keepalive_secs=5),
                     encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "energymon.cli", "simulate", "--config", str(plant)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "serving on" in proc.stdout.readline()
        yield plant
    finally:
        proc.terminate()
        proc.wait(20)
        link.close()


@pytest.mark.timeout(3600)  # 50 restarts on a loaded machine: a guard against a hang, not a speed bound
def test_fifty_kill_9_in_a_row_lose_nothing_and_count_nothing_twice(
    simulator: Path, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    began = time.monotonic()
    data_dir = tmp_path / "gw"
    outbox = data_dir / "outbox-gw-kill.sqlite"
    log = tmp_path / "gateway.log"
    subscriber = ReadingsCapture("127.0.0.1", mosquitto.port, "kill-test-capture")
    server = subprocess.Popen(
        [sys.executable, "-c", FORK_SERVER, "--log-level", "INFO", "gateway", "--config", str(simulator),
         "--data-dir", str(data_dir), str(log)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    stdin, stdout = server.stdin, server.stdout

    def spawn() -> int:
        stdin.write("spawn\n")
        stdin.flush()
        return int(stdout.readline())

    def reap(pid: int) -> int:
        stdin.write(f"wait {pid}\n")
        stdin.flush()
        return int(stdout.readline())

    rnd = random.Random(SEED)
    in_outbox_at_kill: dict[int, bytes] = {}  # every batch seen in the file right after a kill
    killed_with_backlog = 0
    pid = 0
    try:
        assert stdout.readline().strip() == "ready"
        for k in range(KILLS):
            before, _ = read_outbox(outbox)
            pid = spawn()
            if k % 5 == 4:  # now and then a kill during start-up, before anything is polled
                time.sleep(rnd.uniform(0.0, 0.3))
            else:  # otherwise once this run has committed a batch, at a random point of the flow after it
                wait_for(lambda b=before: read_outbox(outbox)[0] > b, f"run {k} committed no batch", log)
                time.sleep(rnd.uniform(0.0, 0.8))
            os.kill(pid, signal.SIGKILL)
            status = reap(pid)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, log.read_text()[-3000:]
            _, waiting = read_outbox(outbox)
            killed_with_backlog += bool(waiting)
            for seq, payload in waiting.items():
                assert in_outbox_at_kill.setdefault(seq, payload) == payload  # a batch never changes on disk
        # a last run drains the outbox and stops cleanly (SIGTERM), once it is running (it committed a batch of
        # its own) and everything committed so far has arrived
        before, _ = read_outbox(outbox)
        pid = spawn()

        def drained() -> bool:
            last, _ = read_outbox(outbox)
            return last > before and {decode_batch(p).seq for p in subscriber.snapshot()} >= set(range(1, last + 1))

        wait_for(drained, "the last run did not deliver the backlog", log)
        os.kill(pid, signal.SIGTERM)
        assert reap(pid) == 0, log.read_text()[-3000:]
        pid = 0
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ValueError, OSError):
                reap(pid)
        with contextlib.suppress(OSError):
            stdin.write("quit\n")
            stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        stdout.close()
    last, waiting = read_outbox(outbox)
    assert waiting == {}  # the clean stop drained everything
    wait_for(lambda: len({decode_batch(p).seq for p in subscriber.snapshot()}) >= last,
             "the subscriber did not receive every batch", log)
    subscriber.close()

    by_seq: dict[int, set[bytes]] = defaultdict(set)
    received = subscriber.snapshot()
    for payload in received:
        batch = decode_batch(payload)
        assert batch.gateway == "gw-kill"
        by_seq[batch.seq].add(payload)
    # every committed batch arrived at least once; a re-sent one is byte-identical
    assert set(by_seq) == set(range(1, last + 1)), sorted(set(range(1, last + 1)) - set(by_seq))[:20]
    assert all(len(p) == 1 for p in by_seq.values())
    # every batch the outbox held at a kill arrived, with the same readings
    for seq, stored in in_outbox_at_kill.items():
        assert decode_batch(next(iter(by_seq[seq]))).points == decode_batch(stored).points
    # deduplicated by (gateway, seq), every tick of every item arrived exactly once
    ticks: dict[tuple[str, str], list[int]] = defaultdict(list)
    for seq in sorted(by_seq):
        for p in decode_batch(next(iter(by_seq[seq]))).points:
            ticks[(p.meter, p.quantity)].append(p.ts_ms)
    assert set(ticks) == {(m, q) for m in ("kiln_drive", "raw_mill") for q in ("energy_active_import", "power_active")}
    for series in ticks.values():
        assert len(series) == len(set(series))  # no reading twice
    # the edge intervals chain across the kills: none lost, none booked twice
    for meter in ("kiln_drive", "raw_mill"):
        readings = sorted(
            (p.ts_ms, p.value, p.interval)
            for seq in by_seq
            for p in decode_batch(next(iter(by_seq[seq]))).points
            if p.meter == meter and p.quantity == "energy_active_import"
        )
        assert readings[0][2] is None  # the first reading ever: no baseline yet
        for (prev_ts, prev_value, _), (ts, value, interval) in itertools.pairwise(readings):
            assert interval is not None and prev_value is not None and value is not None, (meter, ts)
            assert (interval.start_ms, interval.amount, interval.flag) == (prev_ts, value - prev_value, "ok")
        booked = sum(iv.amount for _, _, iv in readings if iv is not None)
        assert booked == pytest.approx(readings[-1][1] - readings[0][1], rel=1e-12)
    polls = len(next(iter(ticks.values())))
    duplicates = len(received) - len(by_seq)
    print(f"\n{KILLS} kills: {last} batches, {polls} polls, {duplicates} re-sent, "
          f"{len(in_outbox_at_kill)} batches in the outbox at kills ({killed_with_backlog} kills left some), "
          f"{time.monotonic() - began:.1f} s")
    assert polls >= KILLS - KILLS // 5  # a steady flow: every run but the start-up kills committed batches
    assert killed_with_backlog > 0  # kills did land while batches were waiting
