"""The image: the chart's default names what deploy/Containerfile builds, and the CI check
(.ci/image-check) runs the Containerfile's own install script on the same Debian release.

The check itself (debootstrap, chroot, install, mount smoke test) runs from .ci/run.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
CHECK = ROOT / ".ci" / "image-check"


def _chart() -> tuple[dict, dict]:
    chart = yaml.safe_load((ROOT / "deploy" / "helm" / "mxfs" / "Chart.yaml").read_text())
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "mxfs" / "values.yaml").read_text())
    return chart, values


def test_chart_default_image_is_what_the_containerfile_builds():
    chart, values = _chart()
    default = f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"
    text = CONTAINERFILE.read_text()
    built = re.search(r"podman build -f deploy/Containerfile -t (\S+) \.", text)
    assert built and built.group(1) == default
    label = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', text)
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert label and version and label.group(1) == chart["appVersion"] == version.group(1)
    assert default in (ROOT / "deploy" / "README.md").read_text()
    for rendered in re.findall(r"image: (\S*mxfs\S*)", (ROOT / "deploy" / "manifests" / "mxfs.yaml").read_text()):
        assert rendered == default


def test_containerfile_and_check_share_the_install_script_and_release():
    text = CONTAINERFILE.read_text()
    assert re.search(r"^ENTRYPOINT \[\"mxfs\"\]$", text, re.M)
    assert re.search(r"^RUN sh /tmp/mxfs-src/deploy/image/install\.sh /tmp/mxfs-src", text, re.M)
    check = CHECK.read_text()
    assert "sh /tmp/mxfs-src/deploy/image/install.sh /tmp/mxfs-src" in check
    assert "deploy/image/smoke.sh" in check
    assert re.search(r"^FROM \S*debian:bookworm\S*$", text, re.M)  # the release the check bootstraps
    assert "FROM .*debian:" in check  # ...which it reads from the Containerfile
    assert "bash .ci/image-check" in (ROOT / ".ci" / "run").read_text()


def test_no_compiler_is_installed_anywhere():
    """Every Python dependency comes as a wheel, so neither the image nor CI installs a compiler
    or -dev headers (pyfuse3, the one that needed them, is gone); the image enforces it with
    --only-binary and the chroot check asserts no compiler is there after the install."""
    build_only = {"gcc", "g++", "cc", "clang", "build-essential", "libc6-dev", "pkg-config", "libfuse3-dev",
                  "python3-dev"}
    install = (ROOT / "deploy" / "image" / "install.sh").read_text()
    runtime = re.search(r'^RUNTIME_PACKAGES="([^"]*)"', install, re.M)
    assert runtime and not build_only & set(runtime.group(1).split())
    assert "BUILD_PACKAGES" not in install and "--only-binary=:all:" in install
    setup = re.search(r"^APT_PACKAGES=\(([^)]*)\)", (ROOT / ".ci" / "setup").read_text(), re.M)
    assert setup and not build_only & set(setup.group(1).split())
    assert "command -v cc" in CHECK.read_text()
