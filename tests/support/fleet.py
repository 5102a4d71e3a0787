"""An emulated fleet: the mxfs server and each node daemon in its own network namespace.

Layout of one run (``prefix`` is unique per run: ``mxfsnet-<pid>-<random>``)::

    <prefix>-br   bridge namespace: br0 + one veth end per member (l0, l1, ...)
    <prefix>-s    the server, eth0 = 10.77.0.1/16
    <prefix>-n0   node 0, eth0 = 10.77.1.0/16 ...

Every veth pair is created inside namespaces of this run (``ip -n NS link add ... peer ...
netns OTHER``), so no interface or address ever appears in the host's namespace and nothing
routes out. Each member's link is shaped on both ends (its eth0 = upload, the bridge side =
download) by ``netem`` (delay, loss) with a ``tbf`` child (rate); ``Link`` changes either at
run time, and ``cut()`` drops every packet while the interfaces stay up (a pulled cable, not a
clean close). Processes start under ``nsenter --net=/run/netns/NS``: only the network
namespace changes, so a daemon's FUSE mount stays visible to the host, where the test reads it.

The host has no route into the namespaces; probes (a TCP connect, a metrics scrape) run in a
thread that first ``setns``-es into the member's namespace. ``sweep_stale`` removes namespaces
(and their processes) of runs whose process is gone, so a crashed run never blocks the next.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from mxfs.block_peers.registry import HolderRegistryClient
from mxfs.demo import wait_for
from mxfs_daemon import mountpoint as mounts
from tests.support.cluster import run_all

T = TypeVar("T")

PREFIX_BASE = "mxfsnet"
CLONE_NEWNET = 0x40000000
SUBNET = "10.77"
SERVER_IP = f"{SUBNET}.0.1"
SERVER_PORT = 8001
DATA_PORT = 8002
METRICS_PORT = 9091
PEER_PORT = 8470
NODE_METRICS_PORT = 9092
_STALE = re.compile(rf"^{PREFIX_BASE}-(\d+)-[0-9a-f]+-")


def _env() -> dict[str, str]:
    return dict(os.environ, MXFS_LOG_FORMAT="text", PYTHONUNBUFFERED="1")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=20)


def _tc(ns: str, *args: str) -> None:
    out = subprocess.run(["tc", "-n", ns, *args], capture_output=True, text=True, timeout=20)
    if out.returncode:
        raise RuntimeError(f"tc {' '.join(args)} in {ns}: {out.stderr.strip()}")


def netns_unavailable() -> str | None:
    """Why this machine cannot run an emulated fleet (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "tc", "nft", "nsenter", "fusermount3"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install -y iproute2 nftables util-linux fuse3)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "needs /dev/fuse"
    probe = f"{PREFIX_BASE}-{os.getpid()}-{uuid.uuid4().hex[:6]}-probe"
    out = _ip("netns", "add", probe, check=False)
    if out.returncode:
        return f"ip netns add failed: {out.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def in_netns(ns: str, fn: Callable[[], T], timeout_s: float = 30.0) -> T:
    """Run ``fn`` in a fresh thread that has entered network namespace ``ns`` (sockets it makes live there)."""
    result: list = []

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {ns}: {os.strerror(err)}")
        finally:
            os.close(fd)
        try:
            result.append((True, fn()))
        except BaseException as exc:  # handed to the caller's thread
            result.append((False, exc))

    t = threading.Thread(target=body, daemon=True, name=f"netns-{ns}")
    t.start()
    t.join(timeout_s)
    if not result:
        raise TimeoutError(f"call in namespace {ns} took over {timeout_s}s")
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _kill_netns_pids(ns: str) -> None:
    out = _ip("netns", "pids", ns, check=False)
    for pid in out.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def sweep_stale() -> list[str]:
    """Delete namespaces (killing their processes) left by runs whose process has exited."""
    out = _ip("netns", "list", check=False)
    removed = []
    for line in out.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _STALE.match(name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _kill_netns_pids(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


def _nft(ns: str, script: str) -> None:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script,
                         capture_output=True, text=True, timeout=20)
    if out.returncode:
        raise RuntimeError(f"nft in {ns}: {out.stderr.strip()}")


def has_netem() -> bool:
    """Whether the kernel has sch_netem (delay); many VM kernels are built without it."""
    try:
        import gzip

        with gzip.open("/proc/config.gz", "rt") as fh:
            return any(line.startswith("CONFIG_NET_SCH_NETEM=") for line in fh)
    except OSError:
        return Path("/sys/module/sch_netem").exists()


@dataclass
class Link:
    """One member's cable to the bridge; change its rate, loss or delay at any time, or cut it.

    Rate: ``tbf`` on both ends (the member's eth0 = upload, the bridge side = download).
    Loss and cut: an nftables table in the member's namespace dropping packets at random
    (``numgen``) on input and output, so both directions lose ``loss_pct``. Delay: a ``netem``
    root with the tbf as its child, only where the kernel has sch_netem (``has_netem()``).
    """

    ns: str          # the member's namespace (its end is eth0)
    bridge_ns: str   # the bridge namespace (its end is ``bridge_dev``)
    bridge_dev: str
    rate_mbit: float
    delay_ms: float = 0.0
    loss_pct: float = 0.0
    _installed: bool = False
    _netem: bool = False

    def _ends(self) -> list[tuple[str, str]]:
        return [(self.ns, "eth0"), (self.bridge_ns, self.bridge_dev)]

    def _qdiscs(self) -> None:
        burst = max(64 * 1024, int(self.rate_mbit * 1e6 / 8 / 100))  # ~10 ms of traffic
        tbf = ["tbf", "rate", f"{self.rate_mbit:g}mbit", "burst", str(burst), "latency", "200ms"]
        want_netem = self.delay_ms > 0 or self._netem
        if want_netem and not has_netem():
            raise RuntimeError("link delay needs sch_netem, which this kernel lacks (CONFIG_NET_SCH_NETEM)")
        for ns, dev in self._ends():
            if want_netem:  # one-way delay on each end: the round trip gets delay_ms
                verb = "change" if self._netem else "replace"
                _tc(ns, "qdisc", verb, "dev", dev, "root", "handle", "1:", "netem", "limit", "100000",
                    "delay", f"{self.delay_ms / 2:g}ms")
                _tc(ns, "qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:", *tbf)
            else:
                _tc(ns, "qdisc", "replace", "dev", dev, "root", "handle", "1:", *tbf)
        self._netem = want_netem
        self._installed = True

    def _drop(self, per_10k: int) -> None:
        rule = "drop" if per_10k >= 10000 else f"numgen random mod 10000 < {per_10k} drop"
        body = "" if per_10k <= 0 else f"""
            chain rx {{ type filter hook input priority 0; iifname "eth0" {rule}; }}
            chain tx {{ type filter hook output priority 0; oifname "eth0" {rule}; }}"""
        # "add table" + "delete table" + "table ..." in one transaction: replace atomically
        _nft(self.ns, f"add table inet netfleet\ndelete table inet netfleet\ntable inet netfleet {{{body}\n}}\n")

    def shape(self, rate_mbit: float | None = None, delay_ms: float | None = None,
              loss_pct: float | None = None) -> None:
        """Set the rate (Mbit/s, each way), round-trip delay (ms) and packet loss (% each way)."""
        if rate_mbit is not None:
            self.rate_mbit = rate_mbit
        if delay_ms is not None:
            self.delay_ms = delay_ms
        if rate_mbit is not None or delay_ms is not None or not self._installed:
            self._qdiscs()
        if loss_pct is not None:
            self.loss_pct = loss_pct
            self._drop(round(loss_pct * 100))

    def cut(self) -> None:
        """Drop every packet both ways (connections hang, nothing is closed)."""
        self._drop(10000)

    def restore(self) -> None:
        """Undo ``cut``: back to the configured loss."""
        self._drop(round(self.loss_pct * 100))


@dataclass
class Member:
    """A namespace on the bridge: its address, link and the process running in it."""

    name: str
    ns: str
    ip: str
    link: Link
    workdir: Path
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    def nic_bytes(self) -> tuple[int, int]:
        """(rx, tx) byte counters of this member's eth0."""
        out = _ip("-n", self.ns, "-j", "-s", "link", "show", "dev", "eth0")
        stats = json.loads(out.stdout)[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    def popen(self, args: list[str]) -> subprocess.Popen:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.killed = False
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns}", "--", *args],
            env=_env(), stdout=self.log_path.open("a"), stderr=subprocess.STDOUT,
        )
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    killed: bool = False

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) the process; one that ignores SIGTERM for 20 s is killed so it
        does not outlive the test, and fails the stop."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.killed = kill
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"{self.name} did not exit within 20 s of SIGTERM: {self.log()[-2000:]}") from None

    def scrape(self, port: int, name: str) -> float:
        """Sum of a Prometheus metric (all label sets) from this member's metrics port."""
        url = f"http://{self.ip}:{port}/metrics"
        body = in_netns(self.ns, lambda: urllib.request.urlopen(url, timeout=5).read())
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                if head == name or head.startswith(name + "{"):
                    total += float(value)
        return total


@dataclass
class FleetNode(Member):
    """A node daemon: its mountpoint and cache live on the host's filesystem."""

    @property
    def mountpoint(self) -> Path:
        return self.workdir / "mnt"

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"

    @property
    def peer_address(self) -> str:
        return f"{self.ip}:{PEER_PORT}"

    def node_id(self) -> str:
        return (self.cache_dir / "peer-node-id").read_text().strip()

    def stop(self, kill: bool = False) -> None:
        """As ``Member.stop``; a daemon that exited without a SIGKILL must have removed its own
        mount: one left behind is cleaned up (the machine stays clean) and fails the stop."""
        try:
            super().stop(kill)
        finally:
            left = mounts.is_mounted(self.mountpoint)
            if left:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, timeout=30)
        if left and not self.killed:
            raise AssertionError(f"{self.name} exited without unmounting {self.mountpoint}: {self.log()[-2000:]}")


@dataclass
class NetFleet:
    """Namespaces, links and processes of one emulated fleet; ``close()`` removes all of it."""

    workdir: Path
    rate_mbit: float = 400.0
    delay_ms: float = 0.0
    token: str = "netfleet-token"
    prefix: str = field(default_factory=lambda: f"{PREFIX_BASE}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    server: Member | None = None
    nodes: list[FleetNode] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _next_link: int = 0

    def __enter__(self) -> NetFleet:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(strict=exc_type is None)  # a teardown failure never hides the test's own

    # -- network --------------------------------------------------------------------------

    @property
    def bridge_ns(self) -> str:
        return f"{self.prefix}-br"

    def _netns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _scale_tcp_buffers(self, ns: str) -> None:
        """Size the member's TCP send buffers for its emulated link, not for the host's.

        The kernel's defaults (send buffer and per-flow queue up to 4 MiB) are milliseconds on a
        real NIC but over a second each on a 25-50 Mbit/s link: every peer flow could park
        seconds of data in front of the others, single block reads then took longer than the
        5 s peer read timeout, and tbf's queue dropped about a third of a serving node's packets
        (measured: 16,782 of 52,764 on one uplink of an 8-node run). Scaled to the link, a flow
        holds at most ~80 ms of it.
        """
        per_flow = max(64 * 1024, int(self.rate_mbit * 1e6 / 8 * 0.08))
        out = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                              f"net.ipv4.tcp_wmem=4096 {min(65536, per_flow)} {per_flow}",
                              f"net.ipv4.tcp_limit_output_bytes={max(65536, per_flow // 4)}"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode:
            raise RuntimeError(f"sysctl in {ns}: {out.stderr.strip()}")

    def _ensure_bridge(self) -> None:
        if self.bridge_ns in self._namespaces:
            return
        self._netns(self.bridge_ns)
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def _attach(self, ns: str, ip: str) -> Link:
        """A veth from ``ns`` (eth0 with ``ip``) to the bridge, shaped at the fleet's default rate."""
        self._ensure_bridge()
        self._netns(ns)
        dev = f"l{self._next_link}"
        self._next_link += 1
        _ip("-n", self.bridge_ns, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.bridge_ns, "link", "set", dev, "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", dev, "up")
        _ip("-n", ns, "addr", "add", f"{ip}/16", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        self._scale_tcp_buffers(ns)
        link = Link(ns, self.bridge_ns, dev, self.rate_mbit, self.delay_ms)
        link.shape()
        return link

    # -- members --------------------------------------------------------------------------

    def start_server(self, models_dir: Path, block_size: int, extra: list[str] | None = None) -> Member:
        """``mxfs server`` in its namespace, with the holder registry on (the fleet's token)."""
        ns = f"{self.prefix}-s"
        member = Member("server", ns, SERVER_IP, self._attach(ns, SERVER_IP), self.workdir / "server")
        self.server = member
        member.popen([sys.executable, "-m", "mxfs", "server", "--host", SERVER_IP,
                      "--port", str(SERVER_PORT), "--data-port", str(DATA_PORT),
                      "--metrics-port", str(METRICS_PORT), "--metrics-host", SERVER_IP, "--peer-token", self.token,
                      "--cache-dir", str(member.workdir / "cache"), "--models-dir", str(models_dir),
                      "--block-size", str(block_size), *(extra or [])])

        def up() -> bool:
            if not member.alive():
                raise RuntimeError(f"server exited: {member.log()[-3000:]}")
            try:
                in_netns(ns, lambda: socket.create_connection((SERVER_IP, METRICS_PORT), timeout=1).close())
                in_netns(ns, lambda: socket.create_connection((SERVER_IP, SERVER_PORT), timeout=1).close())
                return True
            except OSError:
                return False

        wait_for(up, 60, "mxfs server in its namespace")
        return member

    def start_node(self, wait_model: str | None = None, extra: list[str] | None = None) -> FleetNode:
        """``mxfs mount`` with its peer port, in a new namespace on the bridge."""
        assert self.server is not None, "start the server first"
        i = len(self.nodes)
        ns = f"{self.prefix}-n{i}"
        ip = f"{SUBNET}.{1 + i // 250}.{i % 250 + 1}"
        node = FleetNode(f"node{i}", ns, ip, self._attach(ns, ip), self.workdir / f"node{i}")
        self.nodes.append(node)
        node.mountpoint.mkdir(parents=True, exist_ok=True)
        node.popen([sys.executable, "-m", "mxfs", "mount", str(node.mountpoint),
                    "--server", f"{SERVER_IP}:{SERVER_PORT}", "--cache-dir", str(node.cache_dir),
                    "--peer-port", str(PEER_PORT), "--peer-host", ip, "--peer-token", self.token,
                    "--metrics-port", str(NODE_METRICS_PORT), "--metrics-host", ip, *(extra or [])])

        def up() -> bool:
            if not node.alive():
                raise RuntimeError(f"daemon {node.name} exited: {node.log()[-3000:]}")
            if not mounts.is_mounted(node.mountpoint):
                return False
            try:
                os.statvfs(node.mountpoint)
            except OSError:
                return False
            return wait_model is None or (node.mountpoint / wait_model).is_dir()

        wait_for(up, 60, f"mount of {node.name}")
        return node

    def server_metric(self, name: str) -> float:
        assert self.server is not None
        return self.server.scrape(METRICS_PORT, name)

    def node_metric(self, node: FleetNode, name: str) -> float:
        return node.scrape(NODE_METRICS_PORT, name)

    def registry(self, call: Callable[[HolderRegistryClient], T]) -> T:
        """``call(client)`` with a holder-registry client dialled from inside the server's namespace."""
        assert self.server is not None

        def run() -> T:
            client = HolderRegistryClient(f"{SERVER_IP}:{SERVER_PORT}", self.token)
            try:
                return call(client)
            finally:
                client.close()

        return in_netns(self.server.ns, run)

    def registered_nodes(self) -> int:
        """Live nodes in the holder registry (the server's gauge, set on every announce)."""
        return int(self.server_metric("mxfs_server_peer_nodes"))

    # -- teardown -------------------------------------------------------------------------

    def close(self, strict: bool = True) -> None:
        """Stop every process, unmount, delete every namespace of this run (safe to call twice).
        Everything is torn down either way; then, with ``strict``, the first member that did
        not stop cleanly (ignored SIGTERM, left its mount) fails the close."""
        try:
            run_all(member.stop for member in [*self.nodes, *([self.server] if self.server is not None else [])])
        except AssertionError:
            if strict:
                raise
        finally:
            for ns in reversed(self._namespaces):
                _kill_netns_pids(ns)
                _ip("netns", "del", ns, check=False)
            self._namespaces.clear()

