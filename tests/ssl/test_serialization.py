"""Space-filling curves: exact round-trips, Hilbert adjacency, batch-contiguous sort permutations."""

from __future__ import annotations

import pytest
import torch

from vid2scene.ssl.serialization import ORDERS, decode, encode, grid_depth, serialize


@pytest.mark.parametrize("order", ORDERS)
def test_round_trip_full_cube(order):
    g = torch.stack(torch.meshgrid(*[torch.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)
    code = encode(g, order, 3)
    assert torch.equal(decode(code, order, 3), g)
    assert torch.equal(torch.sort(code).values, torch.arange(512))  # a bijection onto 0..2^(3·depth)−1


@pytest.mark.parametrize("order", ORDERS)
def test_round_trip_random_deep(order):
    g = torch.randint(0, 1 << 14, (5000, 3), generator=torch.Generator().manual_seed(1))
    assert torch.equal(decode(encode(g, order, 14), order, 14), g)


def test_hilbert_consecutive_codes_are_face_neighbours():
    for order in ("hilbert", "hilbert-trans"):
        p = decode(torch.arange(1 << 12), order, 4)
        assert torch.equal((p[1:] - p[:-1]).abs().sum(1), torch.ones(4095, dtype=torch.long))


def test_transposed_orders_swap_x_and_y():
    g = torch.tensor([[1, 2, 3], [5, 0, 7]])
    assert torch.equal(encode(g, "z-trans", 3), encode(g[:, [1, 0, 2]], "z", 3))
    assert torch.equal(encode(g, "hilbert-trans", 3), encode(g[:, [1, 0, 2]], "hilbert", 3))


def test_z_order_bit_interleaving():
    assert encode(torch.tensor([[1, 0, 0]]), "z", 2).item() == 0b100
    assert encode(torch.tensor([[0, 0, 1]]), "z", 2).item() == 0b001
    assert encode(torch.tensor([[2, 0, 0]]), "z", 2).item() == 0b100000


def test_serialize_permutations_and_batches():
    g = torch.randint(0, 50, (300, 3), generator=torch.Generator().manual_seed(0))
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor([100, 120, 80]))
    code, order, inverse = serialize(g, batch)
    assert code.shape == order.shape == inverse.shape == (4, 300)
    ar = torch.arange(300)
    for k in range(4):
        assert torch.equal(order[k][inverse[k]], ar)
        assert torch.equal(batch[order[k]], batch)  # samples stay contiguous and in order
        assert bool((code[k][order[k]][1:] >= code[k][order[k]][:-1]).all())
    assert grid_depth(g) == 6


def test_rejects_out_of_range():
    with pytest.raises(ValueError):
        encode(torch.tensor([[8, 0, 0]]), "z", 3)
    with pytest.raises(ValueError):
        encode(torch.tensor([[-1, 0, 0]]), "hilbert", 3)
