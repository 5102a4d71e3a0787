"""The ``mx`` loader's file reader on a real mount: a cache blob damaged on disk is never loaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import BLOCK_SIZE, MODEL, sha256_file
from tests.support.needs import need_module

pytestmark = pytest.mark.fuse


def test_corrupt_cache_blob_is_never_loaded(start_server, start_mount, origin_hashes):
    torch = need_module("torch", "pip install torch==2.13.0")
    from safetensors.torch import load_file

    from mxfs.vllm.files import ReadStats, iter_weights

    server = start_server()
    daemon = start_mount(server)
    model = daemon.mountpoint / MODEL
    shards = sorted(model.glob("*.safetensors"))
    for shard in shards:  # every block cached: the daemon now advertises complete backing blobs
        assert sha256_file(shard) == origin_hashes[shard.name]
    backing = Path(os.getxattr(shards[0], "user.mxfs.backing").decode())
    daemon.stop()
    with open(backing, "r+b") as fh:  # damage a block in the middle of a tensor
        fh.seek(2 * BLOCK_SIZE + 100)
        fh.write(b"\xff\x00" * 512)
    daemon.start(wait_model=MODEL)

    stats = ReadStats()
    loaded = dict(iter_weights(shards, stats))
    expected = {}
    for shard in shards:
        expected.update(load_file(server.models_dir / MODEL / shard.name))
    assert loaded.keys() == expected.keys()
    bad = [n for n, t in expected.items() if not torch.equal(loaded[n].view(torch.uint8), t.view(torch.uint8))]
    assert not bad, f"tensors loaded with damaged bytes: {bad[:5]}"
    assert set(stats.nbytes) == {"mount"}
    assert "corrupt" in daemon.log()  # the daemon caught the damage (and refetched the block)


def test_a_block_the_mount_cannot_read_is_an_oserror_not_a_crash(start_server, start_mount):
    """The reader maps the file; a tensor whose bytes the mount fails (EIO: no server, not
    cached) must raise OSError from the reader, which the strategy chain handles, instead of
    a SIGBUS when vLLM touches the view."""
    need_module("torch", "pip install torch==2.13.0")
    from mxfs.vllm.files import ReadStats, iter_weights

    server = start_server()
    daemon = start_mount(server, extra=["--fetch-timeout", "2", "--readahead-blocks", "0"])
    shards = sorted((daemon.mountpoint / MODEL).glob("*.safetensors"))
    with open(shards[0], "rb") as fh:  # the header's block only
        assert len(fh.read(4096)) == 4096
    server.stop()
    with pytest.raises(OSError):
        for _name, tensor in iter_weights(shards[:1], ReadStats()):
            tensor.sum()  # touch every byte of every view
