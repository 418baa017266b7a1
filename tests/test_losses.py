"""The hinge triplet loss and the InfoNCE (softmax) loss against values computed by hand."""

import math

import pytest
import torch

from vsekit.errors import ConfigError
from vsekit.losses import ContrastiveLoss, triplet_hinge_loss

# Rows are images, columns captions; positives on the diagonal d = [0.5, 0.4, 0.7]; margin 0.2.
S = torch.tensor([[0.5, 0.6, 0.1], [0.25, 0.4, 0.55], [0.2, 0.1, 0.7]])
# Image queries, [0.2 + S[i, j] - d_i]+ for j != i:
#   row 0: j=1 -> 0.3,  j=2 -> 0       (sum 0.3, max 0.3)
#   row 1: j=0 -> 0.05, j=2 -> 0.35    (sum 0.4, max 0.35)
#   row 2: j=0 -> 0,    j=1 -> 0       (sum 0,   max 0)
# Caption queries, [0.2 + S[i, j] - d_j]+ for i != j:
#   col 0: i=1 -> 0,   i=2 -> 0        (sum 0,    max 0)
#   col 1: i=0 -> 0.4, i=2 -> 0        (sum 0.4,  max 0.4)
#   col 2: i=0 -> 0,   i=1 -> 0.05     (sum 0.05, max 0.05)
SUM_LOSS = 0.3 + 0.4 + 0.4 + 0.05  # 1.15
HARDEST_LOSS = 0.3 + 0.35 + 0.4 + 0.05  # 1.1


def test_sum_of_hinges_by_hand():
    assert triplet_hinge_loss(S, 0.2, "sum").item() == pytest.approx(SUM_LOSS, abs=1e-6)


def test_hardest_negative_by_hand():
    assert triplet_hinge_loss(S, 0.2, "hardest").item() == pytest.approx(HARDEST_LOSS, abs=1e-6)


def test_same_image_positives_by_hand():
    # Batch entries 0 and 1 show the same image: pairs (0, 1) and (1, 0) are no longer negatives.
    #   rows: row 0 -> 0 (j=1 masked), row 1 -> 0.35 (j=2; j=0 masked), row 2 -> 0
    #   cols: col 1's violation (i=0) is masked -> 0; col 2 keeps i=1 -> 0.05
    ids = torch.tensor([7, 7, 3])
    assert triplet_hinge_loss(S, 0.2, "sum", image_ids=ids).item() == pytest.approx(0.4, abs=1e-6)
    assert triplet_hinge_loss(S, 0.2, "hardest", image_ids=ids).item() == pytest.approx(0.4, abs=1e-6)
    # distinct ids behave like the plain loss
    assert triplet_hinge_loss(S, 0.2, "sum", image_ids=torch.arange(3)).item() == pytest.approx(SUM_LOSS, abs=1e-6)


def test_margin_zero_and_perfect_separation():
    perfect = torch.eye(4)
    assert triplet_hinge_loss(perfect, 0.2, "hardest").item() == 0.0
    # margin 0: row 0 j=1 -> 0.1, row 1 j=2 -> 0.15, col 1 i=0 -> 0.2
    assert triplet_hinge_loss(S, 0.0, "sum").item() == pytest.approx(0.1 + 0.15 + 0.2, abs=1e-6)


def test_collapsed_model_gives_2_b_margin():
    # all similarities equal: every negative violates by exactly the margin (VSE++ issue #27 sanity value)
    b = 8
    assert triplet_hinge_loss(torch.full((b, b), 0.3), 0.2, "hardest").item() == pytest.approx(2 * b * 0.2)
    assert triplet_hinge_loss(torch.full((b, b), 0.3), 0.2, "sum").item() == pytest.approx(2 * b * (b - 1) * 0.2)


def test_hardest_gradient_flows_only_to_hardest_negatives():
    s = S.clone().requires_grad_(True)
    triplet_hinge_loss(s, 0.2, "hardest").backward()
    # each active hinge [m + S[neg] - S[pos]] adds +1 to its negative and -1 to its positive
    expected = torch.zeros(3, 3)
    expected[0, 1] += 1; expected[0, 0] -= 1  # row 0: hardest negative j=1
    expected[1, 2] += 1; expected[1, 1] -= 1  # row 1: hardest negative j=2
    expected[0, 1] += 1; expected[1, 1] -= 1  # column 1: hardest negative i=0
    expected[1, 2] += 1; expected[2, 2] -= 1  # column 2: hardest negative i=1
    assert torch.allclose(s.grad, expected)


def test_warmup_switches_from_sum_to_hardest():
    loss = ContrastiveLoss(margin=0.2, negatives="hardest", warmup_epochs=1)
    loss.set_epoch(0)
    assert loss.current_negatives == "sum"
    assert loss(S).item() == pytest.approx(SUM_LOSS, abs=1e-6)
    loss.set_epoch(1)
    assert loss.current_negatives == "hardest"
    assert loss(S).item() == pytest.approx(HARDEST_LOSS, abs=1e-6)


def test_module_same_image_option_needs_ids():
    loss = ContrastiveLoss(same_image_positives=True)
    with pytest.raises(ValueError, match="image_ids"):
        loss(S)
    assert loss(S, torch.tensor([7, 7, 3])).item() == pytest.approx(0.4, abs=1e-6)
    # off by default: ids are ignored
    assert ContrastiveLoss()(S, torch.tensor([7, 7, 3])).item() == pytest.approx(HARDEST_LOSS, abs=1e-6)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="negatives"):
        triplet_hinge_loss(S, 0.2, "hard")
    with pytest.raises(ValueError, match="square"):
        triplet_hinge_loss(torch.zeros(2, 3))


# ----------------------------------------------------------------------------------------------
# negatives='softmax' (InfoNCE): per query -log(exp(s_pos / t) / sum exp(s / t)), each direction averaged


def _ce(pos: float, others: list[float], t: float) -> float:
    """-log softmax of the positive among itself and ``others``, written out."""
    return -math.log(math.exp(pos / t) / (math.exp(pos / t) + sum(math.exp(o / t) for o in others)))


def test_softmax_by_hand():
    t = 0.1
    rows = _ce(0.5, [0.6, 0.1], t) + _ce(0.4, [0.25, 0.55], t) + _ce(0.7, [0.2, 0.1], t)
    cols = _ce(0.5, [0.25, 0.2], t) + _ce(0.4, [0.6, 0.1], t) + _ce(0.7, [0.1, 0.55], t)
    expected = rows / 3 + cols / 3
    assert triplet_hinge_loss(S, 0.2, "softmax", temperature=t).item() == pytest.approx(expected, rel=1e-5)
    # the margin plays no part
    assert triplet_hinge_loss(S, 0.0, "softmax", temperature=t).item() == pytest.approx(expected, rel=1e-5)


def test_softmax_same_image_positives_leave_the_softmax():
    # entries 0 and 1 show the same image: row 0 drops column 1, row 1 drops column 0, and likewise columns
    t = 0.1
    rows = _ce(0.5, [0.1], t) + _ce(0.4, [0.55], t) + _ce(0.7, [0.2, 0.1], t)
    cols = _ce(0.5, [0.2], t) + _ce(0.4, [0.1], t) + _ce(0.7, [0.1, 0.55], t)
    loss = ContrastiveLoss(negatives="softmax", temperature=t, same_image_positives=True)
    assert loss(S, torch.tensor([7, 7, 3])).item() == pytest.approx(rows / 3 + cols / 3, rel=1e-5)


def test_softmax_collapsed_model_gives_2_log_b():
    # all similarities equal: every query's softmax is uniform over the B candidates
    for b in (2, 5, 16):
        assert triplet_hinge_loss(torch.full((b, b), 0.3), 0.2, "softmax").item() == pytest.approx(2 * math.log(b))


def test_softmax_gradient_by_hand():
    # d/dS[i, j] of the row term is (p_ij - [i == j]) / (t B); columns add the same with the column softmax
    t, b = 0.1, 3
    s = S.clone().requires_grad_(True)
    triplet_hinge_loss(s, 0.2, "softmax", temperature=t).backward()
    p_rows, p_cols = torch.softmax(S / t, dim=1), torch.softmax(S / t, dim=0)
    expected = (p_rows + p_cols - 2 * torch.eye(b)) / (t * b)
    torch.testing.assert_close(s.grad, expected, rtol=1e-5, atol=1e-6)


def test_softmax_module_and_config():
    from vsekit.config import LossConfig

    loss = ContrastiveLoss.from_config(LossConfig(negatives="softmax", temperature=0.1))
    assert loss.current_negatives == "softmax" and loss.temperature == 0.1
    assert loss(S).item() == pytest.approx(triplet_hinge_loss(S, 0.2, "softmax", temperature=0.1).item())
    with pytest.raises(ConfigError, match="loss.temperature"):
        ContrastiveLoss(negatives="softmax", temperature=0.0)


def test_same_text_positives_by_hand():
    # Captions 0 and 1 read the same: pairs (0, 1) and (1, 0) leave the negatives in both directions, as
    # in the same-image case above (0.4).
    tids = torch.tensor([4, 4, 9])
    assert triplet_hinge_loss(S, 0.2, "sum", text_ids=tids).item() == pytest.approx(0.4, abs=1e-6)
    both = triplet_hinge_loss(S, 0.2, "sum", image_ids=torch.tensor([0, 1, 1]), text_ids=tids).item()
    # image ids mask (1, 2) and (2, 1) too: row 1 loses 0.35 and col 2 loses 0.05 -> 0.4 - 0.35 - 0.05 = 0
    assert both == pytest.approx(0.0, abs=1e-6)
    t = 0.1
    rows = _ce(0.5, [0.1], t) + _ce(0.4, [0.55], t) + _ce(0.7, [0.2, 0.1], t)
    cols = _ce(0.5, [0.2], t) + _ce(0.4, [0.1], t) + _ce(0.7, [0.1, 0.55], t)
    loss = ContrastiveLoss(negatives="softmax", temperature=t, same_text_positives=True)
    assert loss(S, None, tids).item() == pytest.approx(rows / 3 + cols / 3, rel=1e-5)
    with pytest.raises(ValueError, match="text_ids"):
        loss(S)


def test_caption_text_ids_compare_normalised_text():
    from vsekit.losses import caption_text_ids

    ids = caption_text_ids(["A plane  is parked.", "a plane is parked", "a plane is parked .", "two planes"])
    assert ids.tolist() == [0, 0, 0, 1]


def test_sharded_same_text_positives_sum_to_the_full_loss():
    from vsekit.losses import sharded_triplet_hinge_loss

    g = torch.Generator().manual_seed(0)
    sims = torch.rand(6, 6, generator=g)
    img, tid = torch.tensor([0, 0, 1, 2, 3, 3]), torch.tensor([5, 6, 5, 7, 8, 6])
    for negatives in ("sum", "hardest", "softmax"):
        full = triplet_hinge_loss(sims, 0.2, negatives, image_ids=img, text_ids=tid)
        shares = sum(
            sharded_triplet_hinge_loss(sims[o:o + 3], sims[:, o:o + 3], o, 0.2, negatives, img[o:o + 3], img, 0.05,
                                       tid[o:o + 3], tid)  # fmt: skip
            for o in (0, 3)
        )
        assert shares.item() == pytest.approx(full.item(), rel=1e-5), negatives


def test_criterion_is_the_weighted_sum_of_its_named_terms():
    from vsekit.config import LossConfig
    from vsekit.errors import ConfigError
    from vsekit.losses import BatchOutputs, Criterion, InstanceTerm

    torch.manual_seed(0)
    img, cap = torch.nn.functional.normalize(torch.randn(4, 8), dim=1), torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    img_logits, cap_logits, ids = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    out = BatchOutputs(img, cap, ids, lambda a, b: a @ b.T, img_logits, cap_logits)
    cfg = LossConfig(ranking_weight=2.0, instance_image_weight=1.0, instance_text_weight=0.1)
    crit = Criterion.from_config(cfg)
    assert crit.names == ["ranking", "instance_image", "instance_text"]
    ce = torch.nn.functional.cross_entropy
    expected = 2.0 * ContrastiveLoss.from_config(cfg)(img @ cap.T, ids) + ce(img_logits, ids) + 0.1 * ce(cap_logits, ids)
    assert crit(out).item() == pytest.approx(expected.item(), rel=1e-6)
    # only the terms with a positive weight; none at all is a config error
    assert Criterion.from_config(LossConfig(ranking_weight=0.0, instance_text_weight=1.0)).names == ["instance_text"]
    with pytest.raises(ConfigError, match="at least one term"):
        Criterion([])
    with pytest.raises(ValueError, match="needs their logits"):
        InstanceTerm("image")(BatchOutputs(img, cap, ids, lambda a, b: a @ b.T))
    with pytest.raises(ValueError, match="text ids"):
        Criterion.from_config(LossConfig(same_text_positives=True))(out)
