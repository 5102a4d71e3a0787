"""Spreading work with rendezvous hashing: which peer to ask, which node fetches first.

* ``rank_holders``: order the holders of a block for one requester. The hash mixes the
  requester's id in, so different nodes prefer different holders of the same block;
  then the less loaded of the two best is tried first (power of two choices).
* ``owner``: in swarm mode every live member computes the same owner for a block, so a
  cold fleet fetches each block from the server once and exchanges the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from mxfs.block_peers.registry import PeerNode
from mxfs.manifest.model import BlockKey


def _score(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest(), "big")


def swarm_id(name: str, revision: str) -> str:
    return f"{name}@{revision}"


def owner(key: BlockKey, members: Sequence[PeerNode]) -> PeerNode | None:
    """The member that fetches ``key`` from the server (highest random weight)."""
    if not members:
        return None
    k = f"{key.sha256}:{key.block_size}:{key.index}"
    return max(members, key=lambda n: (_score(k, n.node_id), n.node_id))


def rank_holders(key: BlockKey, requester: str, holders: Sequence[PeerNode],
                 load: Callable[[str], int]) -> list[PeerNode]:
    """Holders in the order to try them: hash order per requester, least loaded of the top two first."""
    k = f"{key.sha256}:{key.block_size}:{key.index}"
    ordered = sorted(holders, key=lambda n: _score(k, requester, n.node_id), reverse=True)
    if len(ordered) >= 2 and load(ordered[1].node_id) < load(ordered[0].node_id):
        ordered[0], ordered[1] = ordered[1], ordered[0]
    return ordered
