"""Fixtures of the emulated-network fleet tests: a NetFleet torn down even when a test fails."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.cluster import run_all
from tests.support.fleet import NetFleet, netns_unavailable, sweep_stale
from tests.support.needs import missing


def require_netns() -> None:
    """Skip where namespaces cannot be made, but fail in CI (CI=true or MXFS_REQUIRE_ALL=1)."""
    why = netns_unavailable()
    if why is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"emulated-fleet tests cannot run in CI: {why}", pytrace=False)
    missing("netns", f"emulated fleet: {why}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    """A failed fleet test's report carries the last log lines of every process of its fleets."""
    outcome = yield
    report = outcome.get_result()
    fleets: list[NetFleet] = getattr(item, "fleets", [])
    if report.when == "call" and report.failed and fleets:
        report.sections.append(("fleet logs", fleet_logs(fleets)))


def fleet_logs(fleets: list[NetFleet], lines: int = 40) -> str:
    out = []
    for fleet in fleets:
        for member in [fleet.server, *fleet.nodes]:
            if member is not None:
                tail = member.log().splitlines()[-lines:]
                out += [f"----- {member.name} ({member.ip}): last {len(tail)} log lines -----", *tail]
    return "\n".join(out)


@pytest.fixture
def net_fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator:
    """Factory: ``make(rate_mbit=...)`` -> a NetFleet; every fleet is closed after the test
    (a failed test's report shows the logs of its processes)."""
    require_netns()
    sweep_stale()
    fleets: list[NetFleet] = []
    request.node.fleets = fleets

    def make(rate_mbit: float = 200.0) -> NetFleet:
        fleet = NetFleet(tmp_path / f"fleet{len(fleets)}", rate_mbit=rate_mbit)
        fleets.append(fleet)
        return fleet

    yield make
    run_all(fleet.close for fleet in fleets)  # every fleet is torn down before a member that did not stop cleanly fails


@dataclass
class ReadResult:
    """sha256 per file, the slowest single read() call, or the error that stopped the reader."""

    hashes: dict[str, str] = field(default_factory=dict)
    slowest_read_s: float = 0.0
    error: str = ""


def read_tree(model_dir: Path, out: ReadResult, chunk: int = 1 << 20) -> None:
    """Hash every file under ``model_dir`` through the mount, timing each read() call."""
    try:
        for p in sorted(model_dir.rglob("*")):
            if p.is_file():
                h = hashlib.sha256()
                with open(p, "rb", buffering=0) as fh:
                    while True:
                        t = time.monotonic()
                        data = fh.read(chunk)
                        out.slowest_read_s = max(out.slowest_read_s, time.monotonic() - t)
                        if not data:
                            break
                        h.update(data)
                out.hashes[p.relative_to(model_dir).as_posix()] = h.hexdigest()
    except OSError as exc:
        out.error = str(exc)
