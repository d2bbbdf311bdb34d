"""Desired records of a mail domain, TXT splitting, SPF and DMARC checks."""

from __future__ import annotations

import dns.rdtypes.ANY.TXT
import dns.resolver
import pytest

from mailops.dns.policy import check_spf, parse_dmarc, parse_spf, spf_lookup_count
from mailops.dns.records import MailDomainDNS, Record, desired_records, split_txt
from mailops.dns.wire import normalize, to_rdatas

from .samples import dkim_public, domain


def by_key(records: list[Record]) -> dict[tuple[str, str], Record]:
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)), "one RRset per name and type"
    return {r.key: r for r in records}


def test_desired_records_of_a_domain_at_its_zone_apex():
    d = domain("example.test")
    recs = by_key(desired_records(d))
    assert set(recs) == {
        ("@", "MX"), ("mail", "A"), ("mail", "AAAA"), ("@", "TXT"),
        ("mail2025._domainkey", "TXT"), ("_dmarc", "TXT"), ("_mta-sts", "TXT"),
        ("_smtp._tls", "TXT"), ("_submission._tcp", "SRV"), ("_submissions._tcp", "SRV"),
        ("_imap._tcp", "SRV"), ("_imaps._tcp", "SRV"), ("_pop3._tcp", "SRV"),
        ("_pop3s._tcp", "SRV"), ("mta-sts", "A"), ("mta-sts", "AAAA"),
    }
    assert recs["@", "MX"].values == ("10 mail.example.test.",)
    assert recs["mail", "A"].values == ("192.0.2.25",)
    assert recs["mail", "AAAA"].values == ("2001:db8::25",)
    assert recs["@", "TXT"].values == ("v=spf1 mx -all",)
    assert recs["_dmarc", "TXT"].values == (
        "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@example.test",)
    assert recs["_mta-sts", "TXT"].values == ("v=STSv1; id=20250101T000000",)
    # The policy host is served where the service is.
    assert recs["mta-sts", "A"].values == ("192.0.2.25",)
    assert recs["mta-sts", "AAAA"].values == ("2001:db8::25",)
    assert recs["_smtp._tls", "TXT"].values == (
        "v=TLSRPTv1; rua=mailto:tls-reports@example.test",)
    assert recs["mail2025._domainkey", "TXT"].values == (dkim_public(),)
    ports = {name: rec.values[0] for (name, t), rec in recs.items() if t == "SRV"}
    assert ports == {
        "_submission._tcp": "0 1 587 mail.example.test.",
        "_submissions._tcp": "0 1 465 mail.example.test.",
        "_imap._tcp": "0 1 143 mail.example.test.",
        "_imaps._tcp": "0 1 993 mail.example.test.",
        "_pop3._tcp": "0 1 110 mail.example.test.",
        "_pop3s._tcp": "0 1 995 mail.example.test.",
    }
    assert all(r.ttl == 300 for r in recs.values())


def test_domain_below_its_zone_and_service_name_in_another_zone():
    d = domain("shop.example.test", zone="example.test", service_name="mx.provider.test",
               mx_hosts=("mx.provider.test", "20 backup.provider.test"), spf=None,
               dmarc="v=DMARC1; p=reject", tlsrpt_rua="mailto:tls@provider.test", ttl=3600)
    recs = by_key(desired_records(d))
    # The service name lives elsewhere: its A/AAAA are not ours to publish
    # (the domain's own MTA-STS policy host is).
    assert [k for k in recs if k[1] in ("A", "AAAA")] == [("mta-sts.shop", "A"),
                                                          ("mta-sts.shop", "AAAA")]
    assert recs["shop", "MX"].values == ("10 mx.provider.test.", "20 backup.provider.test.")
    assert recs["_dmarc.shop", "TXT"].values == ("v=DMARC1; p=reject",)
    assert recs["_smtp._tls.shop", "TXT"].values == ("v=TLSRPTv1; rua=mailto:tls@provider.test",)
    assert recs["_imaps._tcp.shop", "SRV"].values == ("0 1 993 mx.provider.test.",)
    assert ("mail2025._domainkey.shop", "TXT") in recs
    assert all(r.ttl == 3600 for r in recs.values())


def test_no_mta_sts_record_without_an_id():
    recs = by_key(desired_records(domain(mta_sts_id=None)))
    assert ("_mta-sts", "TXT") not in recs


@pytest.mark.parametrize("kw, message", [
    ({"ipv4": (), "ipv6": ()}, "no ipv4/ipv6"),
    ({"ipv4": ("2001:db8::1",)}, "not an IPv4"),
    ({"zone": "other.test"}, "not inside zone"),
    ({"mta_sts_id": "bad id!"}, "mta_sts_id"),
    ({"spf": "v=spf1 mx ~al"}, "unknown mechanism"),
    ({"dmarc": "v=DMARC1; p=maybe"}, "p='maybe'"),
    ({"mx_hosts": ("ten mail.example.test",)}, "pref host"),
])
def test_bad_domain_input_is_refused_with_a_clear_error(kw, message):
    with pytest.raises(ValueError, match=message):
        domain(**kw)


def test_bad_dkim_value_is_refused():
    with pytest.raises(ValueError, match="v=DKIM1"):
        MailDomainDNS(domain="a.test", service_name="mail.a.test", ipv4=("192.0.2.1",),
                      dkim_selector="s", dkim_public="k=rsa; no key here")


def test_dkim_pasted_in_opendkim_format_is_joined():
    value = dkim_public()
    pasted = f'( "{value[:100]}"\n\t  "{value[100:]}" )  ; ----- DKIM key'
    d = MailDomainDNS(domain="a.test", service_name="mail.a.test", ipv4=("192.0.2.1",),
                      dkim_selector="s", dkim_public=pasted)
    assert d.dkim_public == value


def test_2048_bit_dkim_value_is_split_into_255_byte_strings():
    value = dkim_public()
    assert len(value) > 255  # a real 2048-bit key: 410 characters
    (rdata,) = to_rdatas(Record("s._domainkey", "TXT", 300, (value,)), "example.test")
    assert isinstance(rdata, dns.rdtypes.ANY.TXT.TXT)
    assert [len(s) for s in rdata.strings] == [255, len(value) - 255]
    assert b"".join(rdata.strings).decode() == value
    # Presentation form: two quoted strings, each within the limit.
    text = rdata.to_text()
    assert text.count('"') == 4


def test_split_txt_never_cuts_a_utf8_character():
    value = "a" * 254 + "é" + "b" * 10  # é is 2 bytes and would straddle byte 255
    chunks = split_txt(value)
    assert [len(c) for c in chunks] == [254, 12]
    assert all(len(c) <= 255 for c in chunks)
    assert b"".join(chunks).decode() == value
    assert split_txt("") == (b"",)


def test_normal_form_ignores_spelling_differences():
    a = Record("@", "MX", 300, ("10 MAIL.Example.TEST.", "20 b.example.test."))
    b = Record("@", "mx", 300, ("20 b", "10 mail"))  # relative to the zone
    assert normalize(a, "example.test") == normalize(b, "example.test")
    txt = Record("@", "TXT", 300, ("b=2", "a=1"))
    assert normalize(txt, "example.test") == Record("@", "TXT", 300, ("a=1", "b=2"))
    v6 = Record("mail", "AAAA", 300, ("2001:0db8:0000:0000:0000:0000:0000:0025",))
    assert normalize(v6, "example.test").values == ("2001:db8::25",)


# --- SPF -------------------------------------------------------------------

@pytest.mark.parametrize("spf, count", [
    ("v=spf1 -all", 0),
    ("v=spf1 mx -all", 1),
    ("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all", 0),
    ("v=spf1 a mx/24 ptr include:_spf.example.test exists:%{i}._spf.example.test -all", 5),
    ("v=spf1 a:mail.example.test/24//64 redirect=_spf.example.test", 2),
    ("v=spf1 mx exp=explain.example.test -all", 1),  # exp= costs no lookup
])
def test_spf_lookup_count_counts_the_dns_querying_terms(spf, count):
    assert spf_lookup_count(spf) == count


class FakeResolver:
    """TXT answers from a dict; no network involved."""

    def __init__(self, txt: dict[str, list[str]]) -> None:
        self.txt = txt
        self.asked: list[str] = []

    def resolve(self, name: str, rdtype: str):
        assert rdtype == "TXT"
        self.asked.append(name)
        if name not in self.txt:
            raise dns.resolver.NXDOMAIN()
        return [dns.rdtypes.ANY.TXT.TXT(1, 16, split_txt(v)) for v in self.txt[name]]


def test_spf_lookup_count_follows_includes_with_a_resolver():
    resolver = FakeResolver({
        "_spf.a.test": ["v=spf1 include:_spf.b.test include:_spf.c.test ip4:192.0.2.1 -all"],
        "_spf.b.test": ["v=spf1 a mx -all", "some-other=txt"],
        "_spf.c.test": ["v=spf1 ip6:2001:db8::/32 -all"],
    })
    spf = "v=spf1 mx include:_spf.a.test -all"
    assert spf_lookup_count(spf) == 2  # without a resolver: a lower bound
    # mx + include a (+ include b (+ a + mx) + include c) = 6
    assert spf_lookup_count(spf, resolver) == 6
    assert resolver.asked == ["_spf.a.test", "_spf.b.test", "_spf.c.test"]


def test_more_than_ten_lookups_is_flagged():
    direct = "v=spf1 " + " ".join(f"include:s{i}.example.test" for i in range(11)) + " -all"
    assert spf_lookup_count(direct) == 11
    with pytest.raises(ValueError, match="11 DNS-querying terms .* limit of 10"):
        check_spf(direct)
    with pytest.raises(ValueError, match="limit of 10"):
        domain(spf=direct)
    # Within the limit on its face, over it once the includes are followed.
    resolver = FakeResolver({
        f"n{i}.test": [f"v=spf1 a mx include:n{i + 1}.test -all"] for i in range(5)})
    nested = "v=spf1 include:n0.test -all"
    assert spf_lookup_count(nested) == 1
    assert spf_lookup_count(nested, resolver) > 10
    with pytest.raises(ValueError, match="exceed the limit"):
        check_spf(nested, resolver)


def test_spf_include_loop_is_flagged_not_followed_forever():
    resolver = FakeResolver({"a.test": ["v=spf1 include:b.test -all"],
                             "b.test": ["v=spf1 include:a.test -all"]})
    assert spf_lookup_count("v=spf1 include:a.test -all", resolver) > 10


def test_two_spf_records_at_an_include_are_an_error():
    resolver = FakeResolver({"a.test": ["v=spf1 -all", "v=spf1 mx -all"]})
    with pytest.raises(ValueError, match="2 SPF records"):
        spf_lookup_count("v=spf1 include:a.test -all", resolver)


@pytest.mark.parametrize("spf, message", [
    ("", "must start with 'v=spf1'"),
    ("v=spf2 -all", "must start with 'v=spf1'"),
    ("spf1 mx -all", "must start with 'v=spf1'"),
    ("v=spf1 mx foo -all", "unknown mechanism 'foo'"),
    ("v=spf1 ip4:999.1.1.1 -all", "bad address"),
    ("v=spf1 ip4:2001:db8::1 -all", "IPv6 address"),
    ("v=spf1 ip6 -all", "needs an address"),
    ("v=spf1 include: -all", "needs a domain"),
    ("v=spf1 include -all", "needs a domain"),
    ("v=spf1 -all:example.test", "takes no argument"),
    ("v=spf1 a/abc -all", "bad CIDR"),
    ("v=spf1 redirect=a.test redirect=b.test", "given twice"),
    ("v=spf1 redirect= -all", "needs a domain"),
])
def test_spf_parse_errors_are_clear(spf, message):
    with pytest.raises(ValueError, match=message):
        parse_spf(spf)


def test_spf_parse_result():
    spf = parse_spf("v=spf1 +mx -a:relay.example.test ~ip4:192.0.2.0/24 ?all")
    assert [(t.qualifier, t.name, t.value) for t in spf.terms] == [
        ("+", "mx", ""), ("-", "a", "relay.example.test"), ("~", "ip4", "192.0.2.0/24"),
        ("?", "all", "")]


# --- DMARC -----------------------------------------------------------------

@pytest.mark.parametrize("dmarc, message", [
    ("", "v=DMARC1"),
    ("v=DMARC2; p=none", "v=DMARC1"),
    ("p=none; v=DMARC1", "v=DMARC1"),
    ("v=DMARC1", "p= .* is required"),
    ("v=DMARC1; p=block", "p='block' must be one of none, quarantine, reject"),
    ("v=DMARC1; p=none; sp=drop", "sp='drop'"),
    ("v=DMARC1; p=none; pct=150", "pct='150' must be an integer 0..100"),
    ("v=DMARC1; p=none; rua=dmarc@example.test", "must be mailto:"),
    ("v=DMARC1; p=none; rua=", "empty"),
    ("v=DMARC1; p=none; p=reject", "given twice"),
    ("v=DMARC1; p=none; adkim=x", "adkim='x'"),
    ("v=DMARC1; p=none; fo=2", "fo='2'"),
    ("v=DMARC1; p=none; garbage", "not tag=value"),
])
def test_dmarc_parse_errors_are_clear(dmarc, message):
    with pytest.raises(ValueError, match=message):
        parse_dmarc(dmarc)


def test_dmarc_parse_result():
    d = parse_dmarc("v=DMARC1; p=reject; sp=quarantine; pct=50; "
                    "rua=mailto:a@example.test,mailto:b@example.test!10m; adkim=s; x=y;")
    assert (d.policy, d.subdomain_policy, d.pct, d.adkim, d.aspf) == (
        "reject", "quarantine", 50, "s", "r")
    assert d.rua == ("mailto:a@example.test", "mailto:b@example.test!10m")
    assert ("x", "y") in d.tags  # unknown tags are kept and ignored (RFC 7489 §6.3)
