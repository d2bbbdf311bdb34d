"""The dovecot role's homes watcher (mailops-dovecot-homes), rendered from
its template and run on loopback: a peer that accepts connections gets its
mailboxes' logins, one that refuses them is passed over for the mailbox's
fallback only after `fall` failed probes, and taken back after `rise` good
ones; mailboxes homed on this node get no entry."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import jinja2
import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "roles/dovecot/templates/usr/local/sbin/mailops-dovecot-homes.j2"
SELF, UP, DOWN = "127.0.0.4", "127.0.0.2", "127.0.0.3"


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind((UP, 0))
    sock.listen(16)
    yield sock
    sock.close()


def _setup(tmp_path: Path, port: int) -> tuple[Path, Path]:
    script = tmp_path / "mailops-dovecot-homes"
    script.write_text(jinja2.Template(TEMPLATE.read_text()).render(banner="test"))
    out = tmp_path / "homes"
    config = {
        "self": SELF, "probe_port": port, "output_dir": str(out),
        "services": {"imap": 10143, "pop3": 10110, "smtp": None},
        "homes": [
            {"address": "up@example.test", "nodes": [UP, SELF]},
            {"address": "down@example.test", "nodes": [DOWN, SELF]},
            {"address": "local@example.test", "nodes": [SELF, UP]},
        ],
        "interval": 0.2, "fast_interval": 0.1, "timeout": 0.5, "fall": 2, "rise": 3,
        "proxy_timeout": 3,
    }
    (tmp_path / "homes.json").write_text(json.dumps(config))
    return script, out


def _entries(path: Path) -> dict[str, str]:
    return {ln.split(":", 1)[0]: ln.split(":::::::", 1)[1]
            for ln in path.read_text().splitlines() if not ln.startswith("#")}


def test_once_points_each_mailbox_at_its_first_live_node(tmp_path, listener):
    script, out = _setup(tmp_path, listener.getsockname()[1])
    subprocess.run([sys.executable, str(script), "--once", str(tmp_path / "homes.json")],
                   check=True, timeout=30, capture_output=True)
    imap = _entries(out / "imap")
    assert imap == {"up@example.test": f"proxy_maybe=y host={UP} port=10143 proxy_timeout=3"}
    # down@ falls back to this node and local@ is served here: no entry.
    assert _entries(out / "pop3")["up@example.test"].endswith(f"host={UP} port=10110 "
                                                              "proxy_timeout=3")
    assert _entries(out / "smtp") == {}  # Postfix's SASL: never proxied


def test_a_node_going_down_and_back_moves_its_mailboxes_after_fall_and_rise(tmp_path,
                                                                           listener):
    port = listener.getsockname()[1]
    script, out = _setup(tmp_path, port)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "homes.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while not (out / "imap").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "up@example.test" in _entries(out / "imap")
        listener.close()  # the home node goes away
        deadline = time.monotonic() + 10
        while "up@example.test" in _entries(out / "imap") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _entries(out / "imap") == {}  # served here, the fallback
        back = socket.socket()
        back.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        back.bind((UP, port))
        back.listen(16)
        t0 = time.monotonic()
        while "up@example.test" not in _entries(out / "imap") and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        back.close()
        assert "up@example.test" in _entries(out / "imap")
        assert time.monotonic() - t0 >= 2 * 0.1  # not at the first good probe: `rise`
    finally:
        proc.terminate()
        log = proc.communicate(timeout=10)[0]
    assert f"{UP} is down" in log and f"{UP} is up" in log
