"""The bind role's templates, rendered offline from roles/bind/templates/ and checked
with BIND's own tools (named-checkconf, named-checkzone) on this machine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mailops.converge import templating
from mailops.core.environment import ROOT
from mailops.secrets.wanted import new_tsig_secret

BIND_TEMPLATES = ROOT / "roles" / "bind" / "templates"
ZONES = ["example.test", "example.net", "ext.test"]


def render(path: str, **context) -> str:
    return templating.render(path, root=BIND_TEMPLATES, **context)


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not found:
        pytest.fail(f"{name} is not installed (Debian: apt-get install bind9-utils)",
                    pytrace=False)
    return found


def check(*argv: str) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"{' '.join(argv)}:\n{res.stdout}{res.stderr}"
    return res


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    key = tmp_path / "mailops-tsig.key"
    key.write_text(render("etc/bind/mailops-tsig.key.j2", key_name="mailops",
                          key_algorithm="hmac-sha256", key_secret=new_tsig_secret()))
    (tmp_path / "named.conf.options").write_text(render(
        "etc/bind/named.conf.options.j2", listen_addresses=["127.0.0.1", "198.18.0.13"],
        allow_query=["any"], recursion=False))
    (tmp_path / "named.conf.local").write_text(render(
        "etc/bind/named.conf.local.j2", zones=ZONES, zone_dir=str(tmp_path),
        key_file=str(key), key_name="mailops"))
    for zone in ZONES:
        records = ['@ MX 10 ext1.ext.test.', '@ TXT "v=spf1 mx -all"',
                   "ext1 A 198.18.0.20"] if zone == "ext.test" else []
        (tmp_path / f"db.{zone}").write_text(render(
            "var/lib/bind/db.zone.j2", zone=zone, ttl=300, ns_name="ns1",
            ns_address="198.18.0.13", hostmaster="hostmaster", refresh=3600, retry=900,
            expire=1209600, minimum=300, records=records))
    (tmp_path / "named.conf").write_text(
        f'include "{tmp_path}/named.conf.options";\ninclude "{tmp_path}/named.conf.local";\n')
    return tmp_path


def test_every_file_starts_with_the_banner(rendered):
    for name in ("named.conf.options", "named.conf.local", "mailops-tsig.key"):
        assert (rendered / name).read_text().startswith("// Managed by mailops")
    assert (rendered / "db.example.test").read_text().startswith("; ")


def test_configuration_and_zones_pass_named_checkconf(rendered):
    for name in ("named.conf.options", "named.conf.local", "mailops-tsig.key"):
        check(tool("named-checkconf"), str(rendered / name))  # as the role's validate:
    out = check(tool("named-checkconf"), "-z", str(rendered / "named.conf")).stdout
    for zone in ZONES:
        assert f"zone {zone}/IN: loaded serial 1" in out


def test_zones_take_signed_updates_only_and_recursion_is_off(rendered):
    local = (rendered / "named.conf.local").read_text()
    assert local.count('update-policy { grant "mailops" zonesub ANY; };') == len(ZONES)
    assert local.count('allow-transfer { key "mailops"; };') == len(ZONES)
    options = (rendered / "named.conf.options").read_text()
    assert "recursion no;" in options and "listen-on port 53 { 127.0.0.1; 198.18.0.13; };" \
        in options


def test_first_zone_file_holds_soa_ns_and_glue(rendered):
    out = check(tool("named-checkzone"), "-D", "ext.test", str(rendered / "db.ext.test")).stdout
    lines = {" ".join(ln.split()) for ln in out.splitlines()}
    assert "ext.test. 300 IN SOA ns1.ext.test. hostmaster.ext.test. 1 3600 900 1209600 300" \
        in lines
    assert "ext.test. 300 IN NS ns1.ext.test." in lines
    assert "ns1.ext.test. 300 IN A 198.18.0.13" in lines
    assert "ext.test. 300 IN MX 10 ext1.ext.test." in lines
    assert "ext1.ext.test. 300 IN A 198.18.0.20" in lines
