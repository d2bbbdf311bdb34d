"""verify's offline parts: rows and the report, how a failed probe becomes
a cause and a remedy, and reading Authentication-Results."""

from __future__ import annotations

import smtplib
import ssl

from mailops.verify.external import auth_results
from mailops.verify.probes import RelayOpen, failure_cause
from mailops.verify.report import FAIL, OK, WARN, Report, Row


def test_report_counts_and_fails_only_on_failures():
    report = Report([Row("a", "t", OK, "fine"), Row("b", "t", WARN, "x", "why", "do")])
    assert report.ok and report.summary() == "1 ok, 1 warning(s), 0 failed"
    report.rows.append(Row("c", "t", FAIL, "", "broken", "repair it"))
    assert not report.ok and [r.check for r in report.failed] == ["c"]
    text = report.table()
    assert "FAIL: c (t)\n  cause:  broken\n  remedy: repair it" in text
    assert "WARN: b (t)" in text
    assert report.to_list()[2] == {"check": "c", "target": "t", "result": FAIL, "detail": "",
                                   "cause": "broken", "remedy": "repair it"}


def test_smtp_reply_is_explained():
    cause, remedy = failure_cause(smtplib.SMTPResponseException(550, b"5.1.1 User unknown"),
                             "192.0.2.1", 25, "lb1")
    assert "550" in cause and "does not exist" in cause and "before @" in remedy
    # smtplib's other shape: every recipient refused, the reply per recipient.
    refused = smtplib.SMTPRecipientsRefused({"x@y": (552, b"5.2.2 Mailbox is full")})
    cause, remedy = failure_cause(refused, "192.0.2.1", 587, "lb1")
    assert "552" in cause and "full" in cause and "quota" in remedy


def test_open_relay_and_refused_connection_name_their_fix():
    cause, remedy = failure_cause(RelayOpen(250, b"2.1.5 Ok"), "192.0.2.1", 25, "lb1")
    assert cause.startswith("OPEN RELAY") and "mynetworks" in remedy
    cause, remedy = failure_cause(ConnectionRefusedError(), "192.0.2.1", 993, "lb1")
    assert "192.0.2.1:993" in cause and "haproxy" in remedy


def test_certificate_failure_names_the_certificate():
    exc = ssl.SSLCertVerificationError("certificate verify failed")
    exc.verify_message = "Hostname mismatch, certificate is not valid for 'mail.example.test'."
    cause, remedy = failure_cause(exc, "192.0.2.1", 465, "lb1")
    assert "does not verify" in cause and "Hostname mismatch" in cause
    assert "converge" in remedy


def test_authentication_results_are_read_from_folded_headers():
    raw = ("Return-Path: <a@example.test>\n"
           "Authentication-Results: ext1.ext.test;\n"
           "\tdkim=pass header.d=example.test header.s=mo2026 header.b=abc;\n"
           "\tspf=pass (ext1.ext.test: domain of a@example.test designates 198.18.0.11 as "
           "permitted sender) smtp.mailfrom=a@example.test;\n"
           "\tdmarc=pass (policy=quarantine) header.from=example.test\n"
           "Subject: s\n\nbody dkim=fail\n")
    assert auth_results(raw) == {"dkim": "pass", "spf": "pass", "dmarc": "pass"}
    assert auth_results("Subject: s\n\nx") == {}
