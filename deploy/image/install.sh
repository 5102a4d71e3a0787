#!/bin/sh
# Install mxfs into a Debian root filesystem: the image build (deploy/Containerfile) and the CI
# check (.ci/image-check, in a debootstrap chroot) both run exactly this, as root.
#
#   install.sh SRC     SRC: a writable copy of the mxfs source tree (the build writes the
#                      generated gRPC stubs into it)
#
# Result: a virtual environment in /opt/mxfs with mxfs and its runtime extras (the origins: hf,
# s3, gcs, azure), /usr/local/bin/mxfs, fuse3 for the node daemon. No compiler: every dependency
# comes as a wheel (--only-binary; only mxfs itself is built from SRC, in pure Python).
set -eu
SRC=${1:?usage: install.sh SRC}
PREFIX=/opt/mxfs
EXTRAS=hf,s3,gcs,azure
RUNTIME_PACKAGES="ca-certificates fuse3 python3 python3-venv"
export DEBIAN_FRONTEND=noninteractive

apt-get -o Acquire::Retries=3 update -q
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get -o Acquire::Retries=3 install -y -q --no-install-recommends $RUNTIME_PACKAGES

python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install --disable-pip-version-check --no-input --only-binary=:all: "$SRC[$EXTRAS]"
ln -sf "$PREFIX/bin/mxfs" /usr/local/bin/mxfs

apt-get clean
rm -rf /var/lib/apt/lists/*

mxfs --help >/dev/null
echo "mxfs installed in $PREFIX: $("$PREFIX/bin/python" -c 'import importlib.metadata as m; print(m.version("mxfs"))')"
