"""The on-device tensor checksum: equal bytes agree, any change or move of bytes disagrees."""

from __future__ import annotations

import pytest

from tests.support.needs import need_module

torch = need_module("torch", "pip install torch==2.13.0")

from mxfs.weight_sources import checksum as cs  # noqa: E402


def test_equal_bytes_equal_checksum_and_sizes_count():
    t = torch.randn(1000, 33).to(torch.bfloat16)
    assert cs.checksum(t) == cs.checksum(t.clone())
    assert cs.checksum(torch.zeros(4, dtype=torch.uint8)) != cs.checksum(torch.zeros(8, dtype=torch.uint8))


@pytest.mark.parametrize("nbytes", [1, 3, 4, 7, 4096, 4099])
def test_single_byte_change_is_detected(nbytes):
    t = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
    for pos in {0, nbytes // 2, nbytes - 1}:
        u = t.clone()
        u[pos] ^= 1
        assert cs.checksum(u) != cs.checksum(t)


def test_swapped_words_and_chunks_are_detected(monkeypatch):
    t = torch.arange(64, dtype=torch.int32)
    u = t.clone()
    u[[3, 40]] = u[[40, 3]]
    assert cs.checksum(u) != cs.checksum(t)
    monkeypatch.setattr(cs, "CHUNK_WORDS", 16)
    cs._weights.clear()
    v = torch.cat([t[16:32], t[:16], t[32:]])
    assert cs.checksum(v) != cs.checksum(t)
    cs._weights.clear()


def test_views_and_non_contiguous_tensors():
    base = torch.randn(64, 64)
    assert cs.checksum(base[1:3]) == cs.checksum(base[1:3].clone())
    assert cs.checksum(base.t()) == cs.checksum(base.t().contiguous())
    odd = torch.randint(0, 255, (101,), dtype=torch.uint8)[1:]  # storage offset 1
    assert cs.checksum(odd) == cs.checksum(odd.clone())
