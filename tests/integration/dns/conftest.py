"""Real servers for the DNS integration tests, on 127.0.0.1 only.

- `bind`: Debian's named in the foreground with its own config, a TSIG key
  from tsig-keygen and one fresh primary zone per test name; stopped by its
  own PID at the end of the session.
- `moto_server`: moto's Route 53 in server mode, also stopped by PID.

A missing binary fails the tests with a message instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from mailops.dns.providers.rfc2136 import TsigKey

NAMED = "/usr/sbin/named"
LOOPBACK = "127.0.0.1"
# One zone per test that writes, so tests never see each other's records.
ZONES = ("apply.test", "foreign.test", "badkey.test", "split.test", "spf.test", "race.test")
VENV_BIN = Path(__file__).resolve().parents[3] / ".venv" / "bin"


def need(path: str) -> str:
    found = path if os.path.isabs(path) and os.access(path, os.X_OK) else shutil.which(path)
    if not found:
        pytest.fail(f"{path} is not installed; the DNS integration tests need it "
                    "(Debian: apt-get install bind9 bind9-utils)", pytrace=False)
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


@dataclass(frozen=True)
class Bind:
    port: int
    key: TsigKey
    directory: Path
    log: Path

    def resolver(self) -> dns.resolver.Resolver:
        """A stub resolver that asks only our server (never /etc/resolv.conf)."""
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [LOOPBACK]
        res.port = self.port
        res.lifetime = 3.0
        res.timeout = 1.0
        res.cache = None
        return res


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


def _answers(port: int, zone: str) -> bool:
    query = dns.message.make_query(zone, "SOA")
    try:
        response = dns.query.tcp(query, LOOPBACK, port=port, timeout=0.5)
    except (OSError, dns.exception.DNSException):
        return False
    return response.rcode() == dns.rcode.NOERROR and bool(response.answer)


@pytest.fixture(scope="session")
def bind(tmp_path_factory) -> Bind:
    named = need(NAMED)
    checkconf = need("named-checkconf")
    keygen = need("tsig-keygen")
    directory = tmp_path_factory.mktemp("bind")
    key_text = subprocess.run([keygen, "-a", "hmac-sha256", "mailops-test"], check=True,
                              capture_output=True, text=True, timeout=30).stdout
    key = TsigKey.from_bind(key_text)
    port = free_port()
    conf = CONF_TEMPLATE.format(dir=directory, port=port, key=key_text)
    for zone in ZONES:
        (directory / f"{zone}.db").write_text(ZONE_TEMPLATE.format(zone=zone))
        conf += ZONE_CONF.format(zone=zone, dir=directory, key=key.name)
    conf_path = directory / "named.conf"
    conf_path.write_text(conf)
    check = subprocess.run([checkconf, "-z", str(conf_path)], capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, f"named-checkconf:\n{check.stdout}{check.stderr}"
    log = directory / "named.log"
    with open(log, "wb") as out:
        # -g: foreground, log to stderr; -n 1: one worker is plenty here.
        proc = subprocess.Popen([named, "-g", "-n", "1", "-c", str(conf_path)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not all(_answers(port, z) for z in ZONES):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"named did not start (exit {proc.poll()}):\n{log.read_text()}",
                            pytrace=False)
            time.sleep(0.1)
        yield Bind(port, key, directory, log)
    finally:
        stop(proc)


@pytest.fixture
def unused_port() -> int:
    """A port on 127.0.0.1 nothing listens on (for "no server there" tests)."""
    return free_port()


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory) -> str:
    server = need(str(VENV_BIN / "moto_server"))
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([server, "-H", LOOPBACK, "-p", str(port)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((LOOPBACK, port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start:\n{log.read_text()}", pytrace=False)
                time.sleep(0.1)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        stop(proc)
