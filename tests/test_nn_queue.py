import torch
import torch.nn.functional as F

from declip.losses.nn_queue import NearestNeighborQueue


def test_nearest_is_taken_before_enqueue():
    q = NearestNeighborQueue(4, 2)
    q.bank.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]))
    x = F.normalize(torch.tensor([[0.9, 0.1]]), dim=1)
    assert torch.equal(q.nearest(x), torch.tensor([[1.0, 0]]))
    q.enqueue(x)  # now x itself is in the bank
    torch.testing.assert_close(q.nearest(x), x)


def test_fifo_wraps_around():
    q = NearestNeighborQueue(5, 2)
    for k in range(4):  # 4 x 2 = 8 entries into a bank of 5
        q.enqueue(torch.tensor([[1.0, float(k)], [1.0, float(k) + 0.5]]))
    assert int(q.ptr) == 8 % 5 and int(q.seen) == 8
    ys = sorted(round(float(v), 2) for v in (q.bank[:, 1] / q.bank[:, 0]))
    assert ys == [1.5, 2.0, 2.5, 3.0, 3.5]  # the 5 newest survive, the 3 oldest were overwritten
    assert torch.allclose(q.bank.norm(dim=1), torch.ones(5))


def test_state_round_trip_is_identical():
    q = NearestNeighborQueue(16, 8, seed=3)
    q.enqueue(torch.randn(5, 8))
    q2 = NearestNeighborQueue(16, 8, seed=99)
    q2.load_state_dict(q.state_dict())
    x = F.normalize(torch.randn(7, 8), dim=1)
    assert torch.equal(q.nearest(x), q2.nearest(x))
    q.enqueue(x), q2.enqueue(x)
    assert torch.equal(q.bank, q2.bank) and int(q.ptr) == int(q2.ptr) == 12


def test_non_finite_rows_are_not_enqueued():
    q = NearestNeighborQueue(4, 2)
    before = q.bank.clone()
    q.enqueue(torch.tensor([[float("nan"), 1.0]]))
    assert torch.equal(q.bank, before) and int(q.seen) == 0
