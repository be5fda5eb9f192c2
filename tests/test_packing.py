import pytest
import torch
from axlab.core.packing import code_range, pack_codes, packed_nbytes, unpack_codes


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 5, 8, 13, 1001])
def test_pack_round_trip_exact(bits, n):
    lo, hi = code_range(bits)
    g = torch.Generator().manual_seed(bits * 1000 + n)
    q = torch.randint(lo, hi + 1, (n,), generator=g)
    if n >= 2:
        q[0], q[1] = lo, hi          # the extremes must survive too
    packed = pack_codes(q, bits)
    assert packed.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
    assert torch.equal(unpack_codes(packed, bits, n).long(), q)


def test_pack_keeps_shape_agnostic_order():
    q = torch.arange(-8, 8).reshape(4, 4)
    back = unpack_codes(pack_codes(q, 4), 4, 16).reshape(4, 4)
    assert torch.equal(back.long(), q)


def test_pack_rejects_out_of_range_and_bad_sizes():
    with pytest.raises(ValueError):
        pack_codes(torch.tensor([4]), 3)           # 3-bit range is [-4, 3]
    with pytest.raises(ValueError):
        unpack_codes(torch.zeros(2, dtype=torch.uint8), 4, 10)
    with pytest.raises(ValueError):
        code_range(9)
