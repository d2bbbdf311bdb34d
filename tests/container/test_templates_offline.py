"""Offline validation: render every mail template from the lab model with the
roles' own file lists and variables (mailops/converge/playbooks/render.yml), then
check the result
with the real tools of the target release (`postfix check`, `doveconf -n`,
`rspamadm configtest`), so a broken template fails in seconds, before any
host is touched.

The tools run in a throw-away container (systemd-nspawn, volatile overlay)
on a Debian 12 image with the mail packages. That image is built once from
the lab's base image and cached next to it; the first build fetches the
packages (through MAILOPS_APT_PROXY when set, e.g. a lab's apt-cacher-ng).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mailops.core.durations import seconds
from mailops.core.environment import ROOT
from mailops.inventory.model import load_inventory
from mailops.secrets import pki
from mailops.site import ansible_vars
from mailops.site.mailmodel import load_mail_model
from tests.conftest import lab_inventory_copy

BANNER = "Managed by mailops; local changes are overwritten."
# Every template of the mail roles and the balancer's, by the path it lands on.
MAIL_TEMPLATES = sorted(
    str(p.relative_to(ROOT / "roles" / role / "templates"))[: -len(".j2")]
    for role in ("postfix", "dovecot", "rspamd", "haproxy")
    for p in (ROOT / "roles" / role / "templates").rglob("*.j2")
)
VALIDATOR_PACKAGES = ("postfix", "dovecot-core", "dovecot-imapd", "dovecot-pop3d",
                      "dovecot-lmtpd", "rspamd", "haproxy")
HOST = "mail1"


# ---------------------------------------------------------------- rendering


def _fake_secrets(model: dict) -> dict:
    """Stand-ins for the vault, so rendering needs no vault password."""
    ca = pki.generate_ca("mailops offline test CA")
    cert = pki.issue_certificate(ca, [model["mailops_service_name"]])
    return {
        "vault_tls_ca_cert": ca.cert_pem,
        "vault_tls_ca_key": ca.key_pem,
        "vault_tls_cert": cert.cert_pem,
        "vault_tls_key": cert.key_pem,
        "vault_dkim_keys": {d: pki.generate_dkim_key(1024) for d in model["mailops_domains"]},
        "vault_doveadm_password": "offline-test",
        "vault_mailbox_passwords": {
            m["address"]: {"password": "x", "hash": "{SHA512-CRYPT}$6$salt$offline"}
            for m in model["mailops_mailboxes"]},
    }


def render(inventory: Path, dest: Path, extra_vars: Path,
           *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_CONFIG": "", "ANSIBLE_NOCOLOR": "1"}
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
            str(ROOT / "mailops/converge/playbooks/render.yml"),
            "-e", f"mailops_render_host={HOST}",
            "-e", f"mailops_render_dir={dest}", "-e", f"@{extra_vars}", *extra]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT,
                          stdin=subprocess.DEVNULL, timeout=300)


# Both ways a node runs: on its own, and behind the balancer (PROXY protocol).
@pytest.fixture(scope="module", params=[False, True], ids=["direct", "behind-proxy"])
def rendered(request, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("render")
    inventory = lab_inventory_copy(tmp / "inv", "offline", "198.18.250",
                                   hosts=[HOST, "mail2", "lb1"])
    (inventory / "group_vars/all/vault.yml").unlink(missing_ok=True)
    mail_yml = inventory / "group_vars/all/mail.yml"
    mail_yml.write_text(mail_yml.read_text() + f"mailops_proxy_protocol: {request.param}\n")
    model = yaml.safe_load(mail_yml.read_text())
    extra = tmp / "secrets.yml"
    extra.write_text(yaml.safe_dump(_fake_secrets(model)))
    extra.chmod(0o600)
    # The derived values, as `deploy.py converge` hands them to Ansible.
    inv = load_inventory(inventory)
    site = ansible_vars.write(inv, load_mail_model(inv), tmp / "site.json")
    res = render(inventory, tmp / "root", extra, "-e", f"@{site}")
    assert res.returncode == 0, f"render.yml failed:\n{res.stdout[-3000:]}\n{res.stderr[-2000:]}"
    return tmp / "root"


def test_every_mail_template_is_rendered(rendered):
    missing = [t for t in MAIL_TEMPLATES if not (rendered / t).is_file()]
    assert not missing, f"render.yml does not render {missing}: is it in its role's file list?"


def test_every_template_starts_with_the_banner(rendered):
    for name in MAIL_TEMPLATES:
        lines = (rendered / name).read_text().splitlines()
        # A script's first line is its interpreter; JSON has no comments (a key).
        first = lines[1] if lines[0].startswith("#!") else lines[0]
        assert BANNER in first, f"{name}: first line is {first!r}"


def test_no_secret_in_a_configuration_file(rendered):
    """Secrets live in their own files (key, users, doveadm); the configs only
    point at them."""
    for name in MAIL_TEMPLATES:
        if name == "etc/dovecot/users":
            continue
        text = (rendered / name).read_text()
        assert "PRIVATE KEY" not in text and "offline-test" not in text, name


# ---------------------------------------------------------------- validator


def _apt_proxy_env() -> list[str]:
    proxy = os.environ.get("MAILOPS_APT_PROXY")
    return [f"--setenv=http_proxy={proxy}"] if proxy else []


def _nspawn(root: Path, *argv: str, volatile: bool = True, extra: list[str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit",
           f"--machine=mailops-check-{os.getpid()}", "-D", str(root)]
    if volatile:
        cmd.append("--volatile=overlay")  # every write is thrown away
    cmd += (extra or []) + ["--", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def validator_root() -> Path:
    """A Debian 12 root with the mail packages, built once and cached."""
    if os.geteuid() != 0 or shutil.which("systemd-nspawn") is None:
        pytest.skip("offline validation runs the tools in systemd-nspawn (needs root)")
    from mailops.lab.lab import STATE_ROOT, ensure_image

    base, _ = ensure_image()
    digest = hashlib.sha256(f"{base}|{' '.join(VALIDATOR_PACKAGES)}".encode()).hexdigest()[:10]
    final = STATE_ROOT / "images" / f"validate-{digest}"
    if (final / "complete").exists():
        return final / "rootfs"
    tmp = final.parent / f".build-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(tmp / "rootfs")], check=True)
    script = ("apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
              f"--no-install-recommends {' '.join(VALIDATOR_PACKAGES)}")
    res = _nspawn(tmp / "rootfs", "sh", "-c", script, volatile=False, timeout=900,
                  extra=["--resolv-conf=copy-host", *_apt_proxy_env()])
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.fail(f"could not build the validator image:\n{res.stdout[-2000:]}{res.stderr}")
    (tmp / "complete").write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final / "rootfs"


def check(root: Path, rendered: Path, command: str) -> subprocess.CompletedProcess:
    """Lay the rendered files over / in a throw-away container, then run command."""
    script = ("set -e; useradd --uid 5000 --home-dir /var/vmail --no-create-home vmail; "
              "cp -a /render/. /; chown -R _rspamd: /var/lib/rspamd/dkim; " + command)
    return _nspawn(root, "sh", "-c", script, extra=[f"--bind-ro={rendered}:/render"])


POSTFIX_CHECK = "postfix check && postconf -n >/dev/null && postconf -M >/dev/null"


def _postfix_problems(res: subprocess.CompletedProcess) -> str:
    """Output lines that are errors or warnings (unused or unknown parameters)."""
    lines = (res.stdout + res.stderr).splitlines()
    bad = [ln for ln in lines if "warning" in ln or "fatal" in ln or "error" in ln]
    return "\n".join(bad) if bad or res.returncode == 0 else "\n".join(lines)


def test_postfix_check(validator_root, rendered):
    res = check(validator_root, rendered, POSTFIX_CHECK)
    assert res.returncode == 0 and not _postfix_problems(res), res.stdout + res.stderr


def test_doveconf(validator_root, rendered):
    res = check(validator_root, rendered, "doveconf -n")
    assert res.returncode == 0, res.stdout + res.stderr
    proxied = "smtpd_upstream_proxy_protocol" in (rendered / "etc/postfix/master.cf").read_text()
    assert ("haproxy = yes" in res.stdout) == proxied
    # TLSv1.2 is also Dovecot 2.3's default minimum, so -n does not print it.
    assert "ssl = required" in res.stdout and "disable_plaintext_auth" not in res.stdout


def test_doveconf_replicates_with_the_paired_node(validator_root, rendered):
    res = check(validator_root, rendered, "doveconf -n")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mail_replica = tcp:198.18.250.12:12345" in res.stdout
    assert "notify replication" in res.stdout


def test_haproxy_check(validator_root, rendered):
    res = check(validator_root, rendered, "haproxy -c -f /etc/haproxy/haproxy.cfg")
    assert res.returncode == 0, res.stdout + res.stderr
    cfg = (rendered / "etc/haproxy/haproxy.cfg").read_text()
    ports = sorted(int(ln.split()[1].rsplit(":", 1)[1]) for ln in cfg.splitlines()
                   if ln.strip().startswith("bind "))
    # The seven mail ports, and 443 for the MTA-STS policy.
    assert ports == [25, 110, 143, 443, 465, 587, 993, 995]
    servers = [ln.split()[2] for ln in cfg.splitlines() if ln.strip().startswith("server ")]
    assert sorted(set(servers)) == ["198.18.250.11:110", "198.18.250.11:143",
                                    "198.18.250.11:25", "198.18.250.11:465",
                                    "198.18.250.11:587", "198.18.250.11:993",
                                    "198.18.250.11:995", "198.18.250.12:110",
                                    "198.18.250.12:143", "198.18.250.12:25",
                                    "198.18.250.12:465", "198.18.250.12:587",
                                    "198.18.250.12:993", "198.18.250.12:995"]
    proxied = "smtpd_upstream_proxy_protocol" in (rendered / "etc/postfix/master.cf").read_text()
    assert ("send-proxy-v2" in cfg) == proxied


def _setting(text: str, pattern: str) -> str:
    m = re.search(pattern, text, re.M)
    assert m, f"no line matches {pattern!r}"
    return m[1]


def test_postfix_pause_is_shorter_than_the_balancers_check_timeout(rendered):
    """A paused (throttled) Postfix service must pick up queued health checks
    before the balancer abandons them: Postfix 3.7's smtpd dies on an abandoned
    PROXY connection, which would pause the service again (465 stuck DOWN)."""
    pause = _setting((rendered / "etc/postfix/main.cf").read_text(),
                     r"^service_throttle_time\s*=\s*(\S+)")
    check = _setting((rendered / "etc/haproxy/haproxy.cfg").read_text(),
                     r"^\s*timeout check\s+(\S+)")
    assert seconds(pause, bare="s") < seconds(check, bare="ms"), (pause, check)


def test_mta_sts_policy_is_the_one_whose_id_is_published(rendered):
    """HAProxy serves the text DNS publishes the id of (mailops.site.mtasts)."""
    from mailops.site import mtasts

    model = load_mail_model(load_inventory(ROOT / "inventories" / "lab"))
    served = (rendered / "etc/haproxy/mta-sts.txt").read_text()
    assert served == mtasts.policy(model)
    assert "mode: testing" in served and f"mx: {model.service_name}" in served


def test_rspamadm_configtest(validator_root, rendered):
    res = check(validator_root, rendered, "rspamadm configtest")
    assert res.returncode == 0 and "syntax OK" in res.stdout, res.stdout + res.stderr


def test_a_broken_file_fails_validation(validator_root, rendered, tmp_path):
    """The check is real: a misspelt parameter in main.cf fails it."""
    broken = tmp_path / "root"
    shutil.copytree(rendered, broken, symlinks=True)
    main_cf = broken / "etc/postfix/main.cf"
    main_cf.write_text(main_cf.read_text().replace("smtpd_tls_auth_only = yes",
                                                   "smtpd_tls_auth_onyl = yes"))
    res = check(validator_root, broken, POSTFIX_CHECK)
    assert "smtpd_tls_auth_onyl" in _postfix_problems(res)
