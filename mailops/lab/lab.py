"""The lab: real Debian 12 hosts on this machine, for the main job and tests.

Each inventory host becomes a systemd-nspawn container booted with systemd,
on an overlay of a cached debootstrap image, in its own network namespace,
joined by a veth to the lab's bridge. The machine takes the subnet's first
address and runs apt-cacher-ng there; nothing routes out: hosts get only the
subnet route, and forwarding is off on the bridge.

`up` converges towards that picture: whatever exists and is healthy is kept,
whatever is missing is made, so a second run is a fast no-op and a run after
a crash repairs the rest. `down` removes every namespace, link, mount and
process the lab made, ending processes by their recorded ids only.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mailops.core import procs
from mailops.core.errors import MailopsError
from mailops.core.paths import STATE_ROOT, lab_dir, lab_known_hosts, lab_ssh_key
from mailops.core.progress import step, table
from mailops.inventory.model import Host, Inventory, LabSpec

MIRROR = "http://deb.debian.org/debian/"
SUITE = "bookworm"
# What every host has before bootstrap: enough for systemd, SSH and Ansible.
IMAGE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-apt",
                  "openssh-server", "iproute2", "procps")
# Bump when _customise_image changes, so cached images are rebuilt.
IMAGE_REVISION = 2
BOOT_TIMEOUT = 90.0


class LabError(MailopsError):
    pass


# ---------------------------------------------------------------- helpers


def run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise LabError(f"command failed ({res.returncode}): {' '.join(argv)}\n"
                       f"{res.stderr.strip() or res.stdout.strip()}")
    return res


def _link_exists(name: str, netns: str | None = None) -> bool:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return run(argv, check=False).returncode == 0


def _netns_exists(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def _is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


def _sysctl(key: str, value: str) -> bool:
    """Set a sysctl; True if it had to change."""
    path = Path("/proc/sys") / key.replace(".", "/")
    if path.read_text().strip() == value:
        return False
    path.write_text(value)
    return True


def _tcp_open(address: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def check_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, mounts, systemd-nspawn); "
                       "run it as root")
    for tool in ("systemd-nspawn", "debootstrap", "ip", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is not installed; `python3 deploy.py` installs the "
                           "controller packages listed in pyproject.toml [tool.mailops]")


# ---------------------------------------------------------------- image


def image_dir() -> Path:
    key = " ".join((SUITE, str(IMAGE_REVISION), *IMAGE_PACKAGES))
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return STATE_ROOT / "images" / f"{SUITE}-{digest}"


def ensure_image(rebuild: bool = False) -> tuple[Path, bool]:
    """The base root filesystem; built once (about 45 s) and cached."""
    final = image_dir()
    rootfs = final / "rootfs"
    if (final / "complete").exists() and not rebuild:
        return rootfs, False
    if rebuild and _image_in_use(rootfs):
        raise LabError(f"the base image {final} is in use by lab hosts; "
                       "run `deploy.py lab down` for every lab on it, then --rebuild-image")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".build-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    step("image", "-", f"debootstrap {SUITE} ({', '.join(IMAGE_PACKAGES)}); about a minute")
    res = run(["debootstrap", "--variant=minbase", f"--include={','.join(IMAGE_PACKAGES)}",
               SUITE, str(tmp / "rootfs"), MIRROR], check=False)
    if res.returncode != 0:
        log = tmp / "debootstrap.log"
        log.write_text(res.stdout + res.stderr)
        raise LabError(f"debootstrap failed; see {log} (is the Debian mirror reachable?)")
    _customise_image(tmp / "rootfs")
    (tmp / "complete").write_text(f"{time.time()}\n")
    # Swap in atomically, so a crash never leaves a half image that looks done.
    if (final / "complete").exists() and not rebuild:
        shutil.rmtree(tmp)  # another run built it meanwhile
        return rootfs, False
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(final)
    step("image", "-", f"cached at {final}")
    return rootfs, True


def _image_in_use(rootfs: Path) -> bool:
    with open("/proc/self/mountinfo") as fh:
        return any(f"lowerdir={rootfs}," in line for line in fh)


def _customise_image(rootfs: Path) -> None:
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb http://deb.debian.org/debian-security {SUITE}-security main\n")
    # Every host gets its own SSH host keys and machine id.
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/machine-id").write_text("")
    # debootstrap copied the machine's resolver; lab hosts must not know it.
    resolv = rootfs / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# lab host: no resolver until the lab DNS is deployed\n")
    # debootstrap also copied the machine's name and hosts file: nspawn's
    # --machine name must show through until bootstrap writes the real one.
    (rootfs / "etc/hostname").write_text("")
    (rootfs / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n")
    # nspawn sets up the root mount itself; remounting it in a container
    # fails now and then while several hosts boot at once.
    unit = rootfs / "etc/systemd/system/systemd-remount-fs.service"
    unit.unlink(missing_ok=True)
    unit.symlink_to("/dev/null")


# ---------------------------------------------------------------- state


@dataclass
class LabState:
    """What this lab started, by id; saved after each change."""

    path: Path
    acng: procs.Proc | None = None
    hosts: dict[str, procs.Proc] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> LabState:
        if not path.exists():
            return cls(path)
        raw = json.loads(path.read_text())
        acng = procs.Proc(**raw["acng"]) if raw.get("acng") else None
        hosts = {k: procs.Proc(**v) for k, v in raw.get("hosts", {}).items()}
        return cls(path, acng, hosts)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "acng": self.acng.to_dict() if self.acng else None,
            "hosts": {k: v.to_dict() for k, v in self.hosts.items()},
        }, indent=2))
        tmp.rename(self.path)


class Lab:
    def __init__(self, inventory: Inventory) -> None:
        if inventory.lab is None:
            raise LabError(f"{inventory.path}/hosts.yml: all.vars.mailops_lab: missing, so this "
                           "is not a lab inventory\n  fix: use -i inventories/lab, or add "
                           "`mailops_lab: {name: ..., subnet: ...}`")
        self.inventory = inventory
        self.spec: LabSpec = inventory.lab
        self.dir = lab_dir(self.spec.name)
        self.ssh_key = lab_ssh_key(self.spec.name)
        self.known_hosts = lab_known_hosts(self.spec.name)
        self.ssh_config = self.dir / "ssh" / "config"
        self.changes: list[str] = []

    # -- paths
    def host_dir(self, host: Host) -> Path:
        return self.dir / "hosts" / host.name

    @contextmanager
    def _locked(self) -> Iterator[LabState]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = LabState.load(self.dir / "state.json")
            try:
                yield state
            finally:
                state.save()

    def _changed(self, target: str, what: str) -> None:
        self.changes.append(f"{target}: {what}")
        step("lab", target, what)

    # ------------------------------------------------------------ up
    def up(self, rebuild_image: bool = False) -> list[str]:
        check_root()
        self.changes = []
        rootfs, built = ensure_image(rebuild_image)
        if built:
            self.changes.append("image: built")
        with self._locked() as state:
            self._ensure_ssh_key()
            self._ensure_bridge()
            self._ensure_apt_proxy(state)
            self._warm_apt_proxy()
            hosts = self.inventory.hosts
            record = threading.Lock()

            def ensure(host: Host) -> None:
                proc = self._ensure_host(host, rootfs, state.hosts.get(host.name))
                # Recorded as soon as it runs: if another host fails, this
                # one is still known, so a re-run keeps it and down ends it.
                with record:
                    state.hosts[host.name] = proc
                    state.save()

            # A host taken out of the inventory (a pair removed) leaves the lab.
            for name in sorted(set(state.hosts) - {h.name for h in hosts}):
                if procs.stop(state.hosts.pop(name)):
                    self._changed(name, "stopped (not in the inventory)")
                self._remove_host(name)
                state.save()
            with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                list(pool.map(ensure, hosts))
            self._write_ssh_files()
            with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                list(pool.map(self._wait_ready, hosts))
        return self.changes

    def _ensure_ssh_key(self) -> None:
        if self.ssh_key.exists():
            return
        self.ssh_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mailops-lab-{self.spec.name}",
             "-f", str(self.ssh_key)])
        self._changed("-", f"made the lab SSH key {self.ssh_key}")

    def _ensure_bridge(self) -> None:
        br = self.spec.bridge
        if not _link_exists(br):
            run(["ip", "link", "add", br, "type", "bridge"])
            self._changed(br, "bridge created")
        cidr = f"{self.spec.gateway}/{self.spec.subnet.prefixlen}"
        if cidr not in run(["ip", "-4", "-o", "addr", "show", "dev", br]).stdout:
            run(["ip", "addr", "add", cidr, "dev", br])
            self._changed(br, f"address {cidr}")
        # Safety: never forward lab packets, whatever the global setting is.
        if _sysctl(f"net.ipv4.conf.{br}.forwarding", "0"):
            self._changed(br, "forwarding off")
        if _sysctl(f"net.ipv6.conf.{br}.disable_ipv6", "1"):
            self._changed(br, "IPv6 off")
        if "UP" not in run(["ip", "-br", "link", "show", "dev", br]).stdout.split()[1]:
            run(["ip", "link", "set", br, "up"])
            self._changed(br, "up")

    def _ensure_apt_proxy(self, state: LabState) -> None:
        gw = str(self.spec.gateway)
        if procs.alive(state.acng) and _tcp_open(gw, 3142):
            return
        procs.stop(state.acng)
        acng = self.dir / "acng"
        conf = acng / "conf"
        if not conf.exists():
            shutil.copytree("/etc/apt-cacher-ng", conf)
        # The packaged Debian backend list fails here ("503 Host not found").
        (conf / "backends_debian").write_text(MIRROR + "\n")
        for sub in ("cache", "log", "run"):
            (acng / sub).mkdir(parents=True, exist_ok=True)
        state.acng = procs.spawn([
            "/usr/sbin/apt-cacher-ng", "-c", str(conf), "ForeGround=1",
            f"BindAddress={gw}", "Port=3142", f"CacheDir={acng / 'cache'}",
            f"LogDir={acng / 'log'}", f"PidFile={acng / 'run/pid'}",
            f"SocketPath={acng / 'run/socket'}",
            # apt-cacher-ng races when several clients make it refresh the
            # same index at once ("Failure to move file ... out of the way"),
            # answering 503 or closing a connection apt then waits on for
            # ever. Index files stay fresh for 10 minutes, and are fetched
            # once, serially, before any host asks (see _warm_apt_proxy).
            "FreshIndexMaxAge=600",
        ], acng / "console.log")
        deadline = time.monotonic() + 10
        while not _tcp_open(gw, 3142):
            if time.monotonic() > deadline or not procs.alive(state.acng):
                raise LabError(f"apt-cacher-ng did not start on {gw}:3142; see {acng}/console.log")
            time.sleep(0.1)
        self._changed("-", f"apt proxy started on {gw}:3142 (pid {state.acng.pid})")

    def _warm_apt_proxy(self) -> None:
        """Fetch the release indexes through the proxy one at a time."""
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler(
            {"http": self.spec.apt_proxy_url}))
        for url in (f"{MIRROR}dists/{SUITE}/InRelease",
                    f"{MIRROR}dists/{SUITE}-updates/InRelease",
                    f"http://deb.debian.org/debian-security/dists/{SUITE}-security/InRelease"):
            for attempt in range(3):
                try:
                    with opener.open(url, timeout=30) as resp:
                        resp.read()
                    break
                except OSError as exc:
                    if attempt == 2:
                        raise LabError(f"the apt proxy cannot fetch {url}: {exc}; is the "
                                       "Debian mirror reachable from this machine?") from exc
                    time.sleep(1)

    def _ensure_host(self, host: Host, rootfs: Path, proc: procs.Proc | None) -> procs.Proc:
        ns, veth = self.spec.netns(host), self.spec.veth(host)
        if not _netns_exists(ns):
            run(["ip", "netns", "add", ns])
            self._changed(host.name, f"network namespace {ns}")
        if not _link_exists(veth):
            if _link_exists("host0", ns):
                run(["ip", "-n", ns, "link", "del", "host0"])
            run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "host0",
                 "netns", ns])
            self._changed(host.name, f"veth {veth} <-> {ns}:host0")
        run(["ip", "link", "set", veth, "master", self.spec.bridge, "up"])
        cidr = f"{host.address}/{self.spec.subnet.prefixlen}"
        if cidr not in run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "host0"]).stdout:
            run(["ip", "-n", ns, "addr", "add", cidr, "dev", "host0"])
            self._changed(host.name, f"address {cidr}")
        run(["ip", "-n", ns, "link", "set", "host0", "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # No default route: the subnet route is all a lab host ever gets.

        hdir = self.host_dir(host)
        merged = hdir / "merged"
        if not _is_mounted(merged):
            for sub in ("upper", "work", "merged"):
                (hdir / sub).mkdir(parents=True, exist_ok=True)
            run(["mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={rootfs},upperdir={hdir / 'upper'},workdir={hdir / 'work'}",
                 str(merged)])
            self._changed(host.name, "root filesystem mounted (overlay on the base image)")
        self._seed_host(host, merged)

        if procs.alive(proc):
            return proc
        step("lab", host.name, "booting (systemd-nspawn)")
        new = procs.spawn([
            "systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=passive",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no",
            f"--network-namespace-path=/run/netns/{ns}", f"--machine={host.name}",
            f"--directory={merged}",
            # Firewall rules and addresses in the host's own network
            # namespace (a stopping mail node refuses LMTP, a legacy server
            # shut to clients at the cutover, a balancer's bans and its
            # floating address); the bridge still forwards nothing.
            *(["--capability=CAP_NET_ADMIN"] if {"mail", "legacy", "lb"} & set(host.groups)
              else []),
        ], hdir / "console.log")
        self._changed(host.name, f"booted (pid {new.pid})")
        return new

    def _seed_host(self, host: Host, root: Path) -> None:
        """Per-host identity the image must not share: machine id, SSH keys."""
        mid = root / "etc/machine-id"
        if not mid.read_text().strip():
            mid.write_text(uuid.uuid4().hex + "\n")
        if not (root / "etc/ssh/ssh_host_ed25519_key").exists():
            run(["ssh-keygen", "-A", "-f", str(root)])
        auth = root / "root/.ssh/authorized_keys"
        pub = self.ssh_key.with_suffix(".pub").read_text()
        if not auth.exists() or auth.read_text() != pub:
            auth.parent.mkdir(mode=0o700, exist_ok=True)
            auth.write_text(pub)
            auth.chmod(0o600)

    def _write_ssh_files(self) -> None:
        lines, config = [], []
        for host in self.inventory.hosts:
            pub = (self.host_dir(host) / "merged/etc/ssh/ssh_host_ed25519_key.pub").read_text()
            keytype, key = pub.split()[:2]
            lines.append(f"{host.address},{host.name} {keytype} {key}")
            config.append(f"Host {host.name} {host.address}\n  HostName {host.address}\n")
        self.known_hosts.write_text("\n".join(lines) + "\n")
        self.ssh_config.write_text(
            "".join(config) + f"Host *\n  User root\n  IdentityFile {self.ssh_key}\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n  ConnectTimeout 5\n")

    def ssh_argv(self, host: Host) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), str(host.address)]

    def ssh(self, host: Host, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ssh_argv(host), command], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def _wait_ready(self, host: Host) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not _tcp_open(str(host.address), 22):
            if time.monotonic() > deadline:
                raise LabError(f"{host.name}: SSH did not come up within {BOOT_TIMEOUT:.0f} s; "
                               f"see {self.host_dir(host) / 'console.log'}")
            time.sleep(0.2)
        left = max(5.0, deadline - time.monotonic())
        res = self.ssh(host, "systemctl is-system-running --wait", timeout=left)
        state = res.stdout.strip()
        if state == "degraded":
            # A unit that lost a race while hosts booted together: start it
            # once more; if it fails again, that is a real fault.
            failed = self.ssh(host, "systemctl list-units --failed --plain --no-legend "
                                    "| awk '{print $1}'").stdout.split()
            self.ssh(host, f"systemctl reset-failed; systemctl restart {' '.join(failed)}")
            state = self.ssh(host, "systemctl is-system-running").stdout.strip()
            self._changed(host.name, f"restarted {', '.join(failed)} after boot ({state})")
        if state != "running":
            raise LabError(f"{host.name}: systemd says {state or res.stderr.strip()}; "
                           f"see `systemctl --failed` on it and {self.host_dir(host)}/console.log")

    # ------------------------------------------------------------ down
    def down(self) -> list[str]:
        check_root()
        self.changes = []
        if not self.dir.exists():
            return self.changes
        with self._locked() as state:
            names = set(state.hosts) | {h.name for h in self.inventory.hosts}
            for name in sorted(names):
                if procs.stop(state.hosts.pop(name, None)):
                    self._changed(name, "stopped")
            for name in sorted(names):
                self._remove_host(name)
            if procs.stop(state.acng):
                self._changed("-", "apt proxy stopped")
            state.acng = None
            br = self.spec.bridge
            if _link_exists(br):
                run(["ip", "link", "del", br])
                self._changed(br, "bridge removed")
        return self.changes

    def destroy(self, name: str) -> list[str]:
        """One host gone, its disk with it (a lost machine); `up` makes it
        anew from the image."""
        check_root()
        self.changes = []
        with self._locked() as state:
            if procs.stop(state.hosts.pop(name, None)):
                self._changed(name, "stopped")
            self._remove_host(name)
        return self.changes

    def _remove_host(self, name: str) -> None:
        hdir = self.dir / "hosts" / name
        merged = hdir / "merged"
        if _is_mounted(merged):
            if run(["umount", str(merged)], check=False).returncode != 0:
                run(["umount", "--lazy", str(merged)])
            self._changed(name, "root filesystem unmounted")
        ns = f"{self.spec.name}-{name}"
        if _netns_exists(ns):
            run(["ip", "netns", "del", ns])
            self._changed(name, f"network namespace {ns} removed")
        host = next((h for h in self.inventory.hosts if h.name == name), None)
        # Deleting the namespace takes its veth peer along, asynchronously.
        if host is not None and _link_exists(self.spec.veth(host)):
            res = run(["ip", "link", "del", self.spec.veth(host)], check=False)
            if res.returncode != 0 and "Cannot find device" not in res.stderr:
                raise LabError(f"ip link del {self.spec.veth(host)}: {res.stderr.strip()}")
        if hdir.exists():
            shutil.rmtree(hdir)

    # ------------------------------------------------------------ status
    def status(self) -> list[dict]:
        state = LabState.load(self.dir / "state.json")

        def probe(host: Host) -> dict:
            proc = state.hosts.get(host.name)
            row = {"host": host.name, "groups": ",".join(host.groups),
                   "address": str(host.address), "state": "absent", "ssh": "no"}
            if procs.alive(proc):
                row["state"] = "booted"
                if self.ssh_config.exists() and _tcp_open(str(host.address), 22):
                    res = self.ssh(host, "systemctl is-system-running", timeout=15)
                    if res.returncode in (0, 1) and res.stdout.strip():
                        row["state"] = res.stdout.strip()
                        row["ssh"] = "yes"
            elif _netns_exists(self.spec.netns(host)):
                row["state"] = "stopped"
            return row

        with ThreadPoolExecutor(max_workers=len(self.inventory.hosts)) as pool:
            return list(pool.map(probe, self.inventory.hosts))

    def status_table(self) -> str:
        rows = self.status()
        return table(["host", "group", "address", "state", "ssh"],
                     [[r["host"], r["groups"], r["address"], r["state"], r["ssh"]] for r in rows])
