"""Pack k-bit integer codes into bytes, and back.

Quantized weights are stored as what an export writes: a flat ``uint8`` tensor holding
the codes bit by bit, plus scales. Codes are signed integers in
``[-2**(bits-1), 2**(bits-1) - 1]``; they are stored offset by ``2**(bits-1)`` so each
occupies exactly ``bits`` bits. 8-bit codes are stored as plain ``int8`` (one byte each);
2- and 4-bit codes fill bytes exactly; 3, 5, 6 and 7 bits use a little-endian bit stream
(the last byte is zero-padded).

``unpack_codes(pack_codes(q, bits), bits, q.numel())`` returns ``q`` exactly.
"""

from __future__ import annotations

import torch

__all__ = ["code_range", "pack_codes", "unpack_codes", "packed_nbytes"]


def code_range(bits: int) -> tuple[int, int]:
    """The signed code range of a ``bits``-bit alphabet, e.g. 4 -> (-8, 7)."""
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 1 to 8, got {bits!r}")
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits occupy once packed."""
    code_range(bits)
    return (n * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integer codes (any shape) -> flat uint8 (or int8 for 8 bits) tensor."""
    lo, hi = code_range(bits)
    flat = codes.reshape(-1).to(torch.int16)
    if flat.numel() and (int(flat.min()) < lo or int(flat.max()) > hi):
        raise ValueError(f"codes outside the {bits}-bit range [{lo}, {hi}]")
    if bits == 8:
        return flat.to(torch.int8)
    u = (flat - lo).to(torch.uint8)                                    # (n,) in [0, 2**bits)
    if 8 % bits == 0:                                                  # 1, 2, 4 bits: whole codes per byte
        per = 8 // bits
        pad = (-u.numel()) % per
        u = torch.cat([u, u.new_zeros(pad)]).view(-1, per)            # (bytes, per)
        shifts = torch.arange(per, dtype=torch.uint8) * bits
        return (u << shifts).sum(1, dtype=torch.int32).to(torch.uint8)
    # general case: a bit stream, code i occupies bits [i*bits, (i+1)*bits)
    bit_ix = torch.arange(bits, dtype=torch.uint8)
    stream = ((u.unsqueeze(1) >> bit_ix) & 1).reshape(-1)             # (n*bits,) of 0/1
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).view(-1, 8)   # (bytes, 8)
    return (stream << torch.arange(8, dtype=torch.uint8)).sum(1, dtype=torch.int32).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Flat packed tensor -> the first ``n`` signed codes as int8 (shape (n,))."""
    lo, _ = code_range(bits)
    if packed.numel() != packed_nbytes(n, bits):
        raise ValueError(f"{packed.numel()} bytes cannot hold {n} codes of {bits} bits "
                         f"({packed_nbytes(n, bits)} expected)")
    if bits == 8:
        return packed.reshape(-1).to(torch.int8)[:n].clone()
    p = packed.reshape(-1).to(torch.uint8)
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.uint8) * bits
        u = ((p.unsqueeze(1) >> shifts) & (2 ** bits - 1)).reshape(-1)[:n]
    else:
        stream = ((p.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)[:n * bits]
        u = (stream.view(n, bits).to(torch.int16) << torch.arange(bits, dtype=torch.int16)).sum(1)
    return (u.to(torch.int16) + lo).to(torch.int8)
