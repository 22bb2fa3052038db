import pytest
import torch

from medmae_ext.networks.masking import AttentionMasking, RandomMasking, patch_counts


def _is_partition(plan, n):
    allidx = torch.cat([plan.visible, plan.masked, plan.thrown], dim=1).sort(dim=1).values
    return torch.equal(allidx, torch.arange(n).expand_as(allidx))


@pytest.mark.parametrize("n,ratio", [(64, 0.75), (216, 0.75), (49, 0.6), (10, 0.05)])
def test_random_masking_keeps_exact_count(n, ratio):
    plan = RandomMasking(ratio)(8, n)
    n_masked = int(round(n * ratio))
    assert plan.masked.shape == (8, n_masked)
    assert plan.visible.shape == (8, n - n_masked)
    assert plan.thrown.shape == (8, 0)
    assert _is_partition(plan, n)
    assert plan.indicator(n).sum(dim=1).eq(n_masked).all()


def test_random_masking_differs_between_samples():
    torch.manual_seed(0)
    plan = RandomMasking(0.75)(4, 64)
    sets = {tuple(sorted(v.tolist())) for v in plan.visible}
    assert len(sets) == 4


@pytest.mark.parametrize("mask, throw", [(1.0, 0.0), (-0.1, 0.0), (0.7, 0.3), (0.5, 0.6)])
def test_bad_ratios_are_rejected(mask, throw):
    with pytest.raises(ValueError, match="ratio"):
        RandomMasking(mask, throw)


def test_patch_counts_leaves_one_visible():
    with pytest.raises(ValueError, match="no visible patch"):
        patch_counts(4, 0.75, 0.25)


def test_attention_masking_counts_and_partition():
    torch.manual_seed(0)
    n = 196
    plan = AttentionMasking(0.45, 0.30)(3, n, weights=torch.rand(3, n))
    assert plan.masked.shape[1] == round(0.45 * n)
    assert plan.thrown.shape[1] == round(0.30 * n)
    assert plan.visible.shape[1] == n - round(0.45 * n) - round(0.30 * n)
    assert _is_partition(plan, n)


def test_attention_masking_prefers_high_attention_patches():
    torch.manual_seed(0)
    n = 64
    w = torch.full((200, n), 0.01)
    w[:, :8] = 1.0  # eight "lesion" patches carry the attention
    plan = AttentionMasking(0.45, 0.30)(200, n, weights=w)
    masked = plan.indicator(n, "masked")
    visible = plan.indicator(n, "visible")
    # lesion patches are nearly always masked, rarely visible; background patches much less often masked
    assert masked[:, :8].mean() > 0.9
    assert visible[:, :8].mean() < 0.02
    assert masked[:, 8:].mean() < 0.45


def test_attention_masking_warmup_and_missing_weights():
    warm = AttentionMasking(warmup=RandomMasking(0.75))(2, 64)
    assert warm.masked.shape[1] == 48 and warm.thrown.shape[1] == 0
    with pytest.raises(ValueError, match="needs one attention weight"):
        AttentionMasking()(2, 64)
    with pytest.raises(ValueError, match="expected \\(2, 64\\)"):
        AttentionMasking()(2, 64, weights=torch.rand(2, 63))
