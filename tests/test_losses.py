"""Each loss against a small example computed by hand."""
import math

import torch
import torch.nn.functional as F

from declip.losses.contrastive import Gathered, ImageToTextInfoNCE, SymmetricInfoNCE
from declip.losses.mlm import MLMLoss
from declip.vocab import masked_positions
from declip.losses.simsiam import SimSiamLoss


def test_clip_loss_hand_computed_3x3():
    # image i matches text i; the only off-diagonal similarity is image 0 / text 1 with cosine 0.6.
    img = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    txt = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 0, 1]])
    scale = torch.tensor(2.0)
    loss, logits = SymmetricInfoNCE()(Gathered(img), Gathered(txt), scale)
    # logits = 2 * img @ txt.T = [[2, 1.2, 0], [0, 1.6, 0], [0, 0, 2]]
    e = math.exp
    i2t = [-math.log(e(2) / (e(2) + e(1.2) + 1)), -math.log(e(1.6) / (1 + e(1.6) + 1)),
           -math.log(e(2) / (1 + 1 + e(2)))]
    # text -> image uses the transpose: rows [[2, 0, 0], [1.2, 1.6, 0], [0, 0, 2]]
    t2i = [-math.log(e(2) / (e(2) + 1 + 1)), -math.log(e(1.6) / (e(1.2) + e(1.6) + 1)),
           -math.log(e(2) / (1 + 1 + e(2)))]
    expected = (sum(i2t) / 3 + sum(t2i) / 3) / 2
    assert abs(loss.item() - expected) < 1e-6
    torch.testing.assert_close(logits, 2 * img @ txt.t())


def test_image_to_text_loss_uses_rank_offset():
    img = torch.eye(2)
    text_all = torch.tensor([[0.0, 1], [1, 0], [0, 1], [1, 0]])  # 2 ranks x 2; this rank is rank 1
    loss = ImageToTextInfoNCE()(img, text_all, offset=2, scale=torch.tensor(1.0))
    # row 0 logits [0, 1, 0, 1] target 2 -> -log(1 / (2 + 2e)); row 1 logits [1, 0, 1, 0] target 3 -> same
    assert abs(loss.item() - math.log(2 + 2 * math.e)) < 1e-6


def test_simsiam_loss_values_and_stop_gradient():
    z1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[0.0, 2.0]], requires_grad=True)
    p1 = torch.tensor([[0.0, 3.0]], requires_grad=True)  # aligned with z2
    p2 = torch.tensor([[1.0, 1.0]], requires_grad=True)  # 45 degrees from z1
    loss = SimSiamLoss()(p1, p2, z1, z2)
    assert abs(loss.item() - (-0.5 * (1.0 + math.sqrt(0.5)))) < 1e-6
    loss.backward()
    assert z1.grad is None and z2.grad is None  # targets are stop-gradient
    assert p2.grad is not None and p2.grad.abs().sum() > 0


def test_mlm_loss_only_at_masked_positions():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 5)
    tokens = torch.randn(2, 3, 4)
    labels = torch.tensor([[-100, 3, -100], [1, -100, -100]])
    rows = []
    head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    loss, _ = MLMLoss()(tokens, labels, head)
    assert rows == [2]  # the head saw the 2 masked positions, not all 6
    expected = (F.cross_entropy(head(tokens[0, 1:2]), torch.tensor([3]))
                + F.cross_entropy(head(tokens[1, 0:1]), torch.tensor([1]))) / 2
    assert abs(loss.item() - expected.item()) < 1e-6
    index = masked_positions(labels)  # what the collate function hands the loss (no mask selection on device)
    assert index.tolist() == [1, 3]
    assert torch.equal(MLMLoss()(tokens, labels, head, index)[0], loss)


def test_collate_carries_the_masked_positions():
    from declip.data.loader import collate

    sample = {"text": torch.zeros(3, dtype=torch.long), "skips": torch.zeros(6, dtype=torch.long),
              "skip_examples": []}
    batch = collate([{**sample, "mlm_labels": torch.tensor([-100, 7, -100])},
                     {**sample, "mlm_labels": torch.tensor([5, -100, 9])}])
    assert batch["mlm_index"].tolist() == [1, 3, 5]


def test_mlm_loss_without_masked_tokens_is_zero_not_nan():
    head = torch.nn.Linear(4, 5)
    loss, acc = MLMLoss()(torch.randn(2, 3, 4), torch.full((2, 3), -100), head)
    assert loss.item() == 0.0 and acc == 0.0
