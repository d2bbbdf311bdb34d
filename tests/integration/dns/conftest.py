"""Real servers for the DNS integration tests, on 127.0.0.1 only.

- `bind`: Debian's named in the foreground with its own config, a TSIG key
  from tsig-keygen and one fresh primary zone per test name; stopped by its
  own PID at the end of the session.
- `moto_server`: moto's Route 53 in server mode, also stopped by PID.

A missing binary fails the tests with a message instead of skipping them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dns.resolver
import pytest

from mailops.dns.providers.rfc2136 import TsigKey
from tests.integration.dns import loopback
from tests.integration.dns.loopback import LOOPBACK

# One zone per test that writes, so tests never see each other's records.
ZONES = ("apply.test", "foreign.test", "badkey.test", "split.test", "spf.test", "race.test")
VENV_BIN = Path(__file__).resolve().parents[3] / ".venv" / "bin"


def need(path: str) -> str:
    try:
        return loopback.which(path)
    except loopback.Missing as e:
        pytest.fail(f"{e}; the DNS integration tests need it", pytrace=False)


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


@pytest.fixture(scope="session")
def bind(tmp_path_factory) -> Bind:
    for tool in (loopback.NAMED, "named-checkconf", "tsig-keygen"):
        need(tool)
    directory = tmp_path_factory.mktemp("bind")
    try:
        proc, port, key = loopback.start_named(directory, ZONES, "mailops-test")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield Bind(port, key, directory, directory / "named.log")
    finally:
        loopback.stop(proc)


@pytest.fixture
def unused_port() -> int:
    """A port on 127.0.0.1 nothing listens on (for "no server there" tests)."""
    return loopback.free_port()


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory) -> str:
    server = need(str(VENV_BIN / "moto_server"))
    try:
        proc, url = loopback.start_moto(server, tmp_path_factory.mktemp("moto") / "moto.log")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield url
    finally:
        loopback.stop(proc)
