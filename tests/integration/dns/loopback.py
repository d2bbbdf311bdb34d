"""Real DNS servers on 127.0.0.1 for the integration tests and bench/dns.py:
Debian's named in the foreground with its own config, a TSIG key from
tsig-keygen and fresh primary zones; moto's Route 53 in server mode. Both
are children of the caller, stopped by their own PID (`stop`)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode

from mailops.dns.providers.rfc2136 import TsigKey

NAMED = "/usr/sbin/named"
LOOPBACK = "127.0.0.1"

ZONE_TEMPLATE = """\
$TTL 300
@    IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 900 1209600 300
@    IN NS  ns1.{zone}.
ns1  IN A   127.0.0.1
"""

CONF_TEMPLATE = """\
options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    dnssec-validation no;
    allow-query {{ 127.0.0.1; }};
    allow-transfer {{ none; }};
}};
controls {{ }};
{key}
"""

ZONE_CONF = """\
zone "{zone}" {{
    type primary;
    file "{dir}/{zone}.db";
    allow-update {{ key "{key}"; }};
    allow-transfer {{ key "{key}"; }};
}};
"""


class Missing(RuntimeError):
    """A server binary that is not installed."""


def which(path: str) -> str:
    found = path if os.path.isabs(path) and os.access(path, os.X_OK) else shutil.which(path)
    if not found:
        raise Missing(f"{path} is not installed (Debian: apt-get install bind9 bind9-utils; "
                      "`python3 deploy.py` installs the controller packages)")
    return found


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (DNS uses both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
            if port > 20000:
                return port
    raise RuntimeError("no free port on 127.0.0.1")


def stop(proc: subprocess.Popen) -> None:
    """End a child we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _answers(port: int, zone: str) -> bool:
    query = dns.message.make_query(zone, "SOA")
    try:
        response = dns.query.tcp(query, LOOPBACK, port=port, timeout=0.5)
    except (OSError, dns.exception.DNSException):
        return False
    return response.rcode() == dns.rcode.NOERROR and bool(response.answer)


def start_named(directory: Path, zones: tuple[str, ...],
                key_name: str) -> tuple[subprocess.Popen, int, TsigKey]:
    """named serving `zones` (updatable and transferable with a new TSIG key)
    on a free port; returns once every zone answers. RuntimeError otherwise."""
    named = which(NAMED)
    checkconf = which("named-checkconf")
    key_text = subprocess.run([which("tsig-keygen"), "-a", "hmac-sha256", key_name],
                              check=True, capture_output=True, text=True, timeout=30).stdout
    key = TsigKey.from_bind(key_text)
    port = free_port()
    conf = CONF_TEMPLATE.format(dir=directory, port=port, key=key_text)
    for zone in zones:
        (directory / f"{zone}.db").write_text(ZONE_TEMPLATE.format(zone=zone))
        conf += ZONE_CONF.format(zone=zone, dir=directory, key=key.name)
    conf_path = directory / "named.conf"
    conf_path.write_text(conf)
    check = subprocess.run([checkconf, "-z", str(conf_path)], capture_output=True, text=True,
                           timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"named-checkconf:\n{check.stdout}{check.stderr}")
    log = directory / "named.log"
    with open(log, "wb") as out:
        # -g: foreground, log to stderr; -n 1: one worker is plenty here.
        proc = subprocess.Popen([named, "-g", "-n", "1", "-c", str(conf_path)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not all(_answers(port, z) for z in zones):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"named did not start (exit {proc.poll()}):\n{log.read_text()}")
        time.sleep(0.1)
    return proc, port, key


def start_moto(server: str, log: Path) -> tuple[subprocess.Popen, str]:
    """moto_server on a free port; returns it and its URL once it listens."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([server, "-H", LOOPBACK, "-p", str(port)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return proc, f"http://{LOOPBACK}:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(f"moto_server did not start:\n{log.read_text()}") from None
            time.sleep(0.1)
