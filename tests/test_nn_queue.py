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


def test_a_batch_with_non_finite_rows_is_not_enqueued():
    q = NearestNeighborQueue(4, 2)
    before = q.bank.clone()
    q.enqueue(torch.tensor([[float("nan"), 1.0]]))
    q.enqueue(torch.tensor([[1.0, 0.0], [float("inf"), 1.0]]))  # one bad row drops the batch (a NaN step)
    assert torch.equal(q.bank, before) and int(q.seen) == 0 and int(q.ptr) == 0
    q.enqueue(torch.tensor([[3.0, 4.0]]))
    assert torch.equal(q.bank[0], torch.tensor([0.6, 0.8])) and int(q.seen) == 1 and int(q.ptr) == 1


def test_a_batch_larger_than_the_bank_keeps_its_newest_rows():
    q = NearestNeighborQueue(3, 2)
    q.enqueue(torch.tensor([[1.0, float(k)] for k in range(5)]))
    assert sorted(round(float(v), 2) for v in q.bank[:, 1] / q.bank[:, 0]) == [2.0, 3.0, 4.0]
    assert int(q.seen) == 3 and int(q.ptr) == 0


def test_exclude_self_skips_the_samples_own_entries():
    """Small data: the bank holds older copies of the same caption; with ids the neighbour is another sample."""
    q = NearestNeighborQueue(4, 2, track_ids=True)
    q.enqueue(F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.3], [0.0, 1.0]]), dim=1), torch.tensor([7, 8, 9]))
    x = torch.tensor([[1.0, 0.0]])
    assert torch.allclose(q.nearest(x), torch.tensor([[1.0, 0.0]]))  # without ids: itself (entry of sample 7)
    assert torch.allclose(q.nearest(x, torch.tensor([7])), F.normalize(torch.tensor([[1.0, 0.3]]), dim=1))
    assert q.ids.tolist() == [7, 8, 9, -1]
    assert "ids" not in NearestNeighborQueue(4, 2).state_dict()  # the reference's queue state is unchanged
