"""Zero-copy-ish wire codec for ``mxfs.v1.Chunk`` (offset=1 varint, data=2 bytes).

Block bytes dominate the traffic; protobuf's generic serializer copies them several
times. The server encodes ``(offset, data)`` straight into the Chunk wire format with a
single join, and the client parses it into a memoryview without copying. The bytes on
the wire are a valid ``Chunk`` message, so generated clients read them unchanged.
"""

from __future__ import annotations


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def encode_chunk(item: tuple[int, bytes | bytearray | memoryview]) -> bytes:
    offset, data = item
    head = (b"\x08" + _varint(offset) if offset else b"") + b"\x12" + _varint(len(data))
    return b"".join((head, data))


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or oversized varint in Chunk")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def decode_chunk(raw: bytes) -> tuple[int, memoryview]:
    """Parse a Chunk message (any field order, unknown fields skipped)."""
    buf = memoryview(raw)
    pos, offset, data = 0, 0, buf[0:0]
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            if field == 1:
                offset = value
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ValueError("truncated Chunk")
            if field == 2:
                data = buf[pos : pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire} in Chunk")
    return offset, data
