"""Block hash algorithms: every block digest in mxfs is made and checked here.

A manifest records the algorithm of its ``block_hashes`` (``Manifest.block_hash``). New
manifests use BLAKE3 (about 5x sha256 per core here, and it releases the GIL); manifests
written before the field existed read as ``sha256``. The whole-file ``FileEntry.sha256``
stays sha256: it is the Hugging Face LFS id and every cache's content address.
"""

from __future__ import annotations

import hashlib

import blake3

SHA256 = "sha256"
BLAKE3 = "blake3"
ALGORITHMS = (SHA256, BLAKE3)
#: the algorithm of newly built manifests
DEFAULT = BLAKE3
#: what a manifest that names no algorithm (written before it was recorded) uses
LEGACY = SHA256

Buffer = bytes | bytearray | memoryview


def check_algorithm(name: str) -> str:
    """``name`` if it is a known block hash algorithm (``""`` means the legacy sha256)."""
    name = name or LEGACY
    if name not in ALGORITHMS:
        raise ValueError(f"unknown block hash algorithm {name!r} (known: {', '.join(ALGORITHMS)})")
    return name


def block_digest(algorithm: str, data: Buffer) -> bytes:
    """The 32-byte digest of ``data`` (both hashes release the GIL: call from worker threads)."""
    if algorithm == BLAKE3:
        return blake3.blake3(data).digest()
    if algorithm == SHA256:
        return hashlib.sha256(data).digest()
    raise ValueError(f"unknown block hash algorithm {algorithm!r}")


def block_ok(algorithm: str, data: Buffer, expected: bytes) -> bool:
    """True when ``data`` hashes to ``expected`` under ``algorithm`` (the one verify of mxfs)."""
    return block_digest(algorithm, data) == expected
