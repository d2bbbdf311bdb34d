"""The zone-file provider: output that named-checkzone accepts and that reads
back to the same records; hand-made records kept; bad output refused."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from mailops.dns.plan import make_plan
from mailops.dns.providers.base import ProviderError
from mailops.dns.providers.zonefile import Soa, ZoneFileProvider
from mailops.dns.records import Record, desired_records

from .samples import dkim_public, domain

ZONE = "example.test"


@pytest.fixture(scope="module")
def checkzone() -> str:
    found = shutil.which("named-checkzone")
    if not found:
        pytest.fail("named-checkzone is not installed (Debian: apt-get install bind9-utils)",
                    pytrace=False)
    return found


def make(tmp_path, checkzone=None) -> ZoneFileProvider:
    return ZoneFileProvider(tmp_path, soa=Soa("ns1.example.test.", "hostmaster.example.test."),
                            ns=("ns1.example.test.", "ns2.example.net."),
                            glue={"ns1.example.test": ("192.0.2.53", "2001:db8::53")},
                            checkzone=checkzone)


def run_checkzone(checkzone: str, path) -> str:
    # -i local: check in-zone targets only, so nothing is looked up outside.
    res = subprocess.run([checkzone, "-i", "local", ZONE, str(path)], capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0, f"named-checkzone refused the file:\n{res.stdout}{res.stderr}"
    return res.stdout


def test_written_zone_passes_named_checkzone_and_reads_back(tmp_path, checkzone):
    provider = make(tmp_path)
    desired = desired_records(domain(ZONE))
    plan = make_plan(ZONE, desired, provider.current(ZONE), "prod")
    result = provider.apply(plan)
    assert result.complete
    path = provider.path_for(ZONE)
    out = run_checkzone(checkzone, path)
    assert "loaded serial" in out and out.strip().endswith("OK")
    text = path.read_text()
    # The 2048-bit key sits on one line as two quoted strings of <=255 bytes.
    (line,) = [ln for ln in text.splitlines() if ln.startswith("mail2025._domainkey")]
    strings = re.findall(r'"([^"]*)"', line)
    assert [len(s) for s in strings] == [255, len(dkim_public()) - 255]
    assert "".join(strings) == dkim_public()
    # Read back: the same records, so a re-plan is empty.
    current = provider.current(ZONE)
    assert make_plan(ZONE, desired, current, "prod").is_empty
    by_key = {r.key: r for r in current}
    assert by_key["@", "NS"].values == ("ns1.example.test.", "ns2.example.net.")
    assert by_key["ns1", "AAAA"].values == ("2001:db8::53",)


def test_hand_made_records_survive_and_serial_grows(tmp_path, checkzone):
    provider = make(tmp_path)
    provider.apply(make_plan(ZONE, desired_records(domain(ZONE)), [], "prod"))
    path = provider.path_for(ZONE)
    serial = int(re.search(r"SOA\s+\S+\s+\S+\s+(\d+)", path.read_text()).group(1))
    with open(path, "a") as f:
        f.write('www 3600 IN A 192.0.2.80\nlegacy 3600 IN TXT "kept" "as is"\n')
    rotate = make_plan(ZONE, desired_records(domain(ZONE, key=1)), provider.current(ZONE),
                       "prod")
    assert [(c.action, c.record_name) for c in rotate.changes] == [
        ("update", "mail2025._domainkey")]
    make(tmp_path, checkzone).apply(rotate)
    text = path.read_text()
    assert re.search(r"^www\s+3600 IN A\s+192\.0\.2\.80$", text, re.M)
    assert '"kept" "as is"' in text  # foreign chunking untouched
    assert dkim_public(1)[-60:] in text.replace('" "', "")
    assert int(re.search(r"SOA\s+\S+\s+\S+\s+(\d+)", text).group(1)) > serial
    run_checkzone(checkzone, path)


def test_output_refused_by_named_checkzone_leaves_the_old_file(tmp_path, checkzone):
    provider = make(tmp_path, checkzone)
    provider.apply(make_plan(ZONE, desired_records(domain(ZONE)), [], "prod"))
    before = provider.path_for(ZONE).read_text()
    # A CNAME beside other data at the same name is invalid DNS (RFC 1034 §3.6.2).
    bad = desired_records(domain(ZONE)) + [Record("mail", "CNAME", 300, ("elsewhere.test.",))]
    plan = make_plan(ZONE, bad, provider.current(ZONE), "prod")
    with pytest.raises(ProviderError, match="named-checkzone rejected"):
        provider.apply(plan)
    assert provider.path_for(ZONE).read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["example.test.zone"]  # no temp left
