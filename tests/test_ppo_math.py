"""Tests for rlhf.ppo.math against slow, loop-based reference implementations.

Each vectorised function is compared to a plain-Python reference that walks
batch and time one element at a time (in float64 via ``math``), on random
inputs with right-padded masks of varying lengths including length-1
responses. Default tolerance: rtol=1e-5, atol=1e-5 (float32 vs float64).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.ppo.math import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae_advantages,
    kl_penalized_rewards,
    kl_per_token,
    leave_one_out_baseline,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    missing_eos_penalty,
    normalize_scores,
    sample_response_length,
    truncate_after_eos,
)

SEEDS = [0, 1, 2, 3, 4]
RTOL = 1e-5
ATOL = 1e-5


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_mask(g: torch.Generator, batch: int, length: int) -> torch.Tensor:
    """Right-padded mask; row 0 is forced to length 1 and row 1 to full length."""
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = 1
    if batch > 1:
        lengths[1] = length
    return (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()


def lengths_of(mask: torch.Tensor) -> list[int]:
    return [int(row.sum()) for row in mask]


def assert_close(actual: torch.Tensor, expected, rtol: float = RTOL, atol: float = ATOL) -> None:
    expected_t = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.to(torch.float64), expected_t.reshape(actual.shape), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------
# Slow references: loops over batch and time, python floats.
# --------------------------------------------------------------------------


def ref_valid(x: torch.Tensor, mask: torch.Tensor) -> list[float]:
    out = []
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if mask[b, t]:
                out.append(float(x[b, t]))
    return out


def ref_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    vals = ref_valid(x, mask)
    return sum(vals) / len(vals)


def ref_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool) -> float:
    vals = ref_valid(x, mask)
    mu = sum(vals) / len(vals)
    ss = sum((v - mu) ** 2 for v in vals)
    denom = len(vals) - 1 if unbiased and len(vals) > 1 else len(vals)
    return ss / denom


def ref_logprobs(logits: torch.Tensor, labels: torch.Tensor, temp: float) -> list[list[float]]:
    out = []
    for b in range(logits.shape[0]):
        row = []
        for t in range(logits.shape[1]):
            z = [float(v) / temp for v in logits[b, t]]
            zmax = max(z)
            lse = zmax + math.log(sum(math.exp(v - zmax) for v in z))
            row.append(z[int(labels[b, t])] - lse)
        out.append(row)
    return out


def ref_entropy(logits: torch.Tensor, temp: float) -> list[list[float]]:
    out = []
    for b in range(logits.shape[0]):
        row = []
        for t in range(logits.shape[1]):
            z = [float(v) / temp for v in logits[b, t]]
            zmax = max(z)
            exps = [math.exp(v - zmax) for v in z]
            total = sum(exps)
            probs = [e / total for e in exps]
            row.append(-sum(p * math.log(p) for p in probs if p > 0))
        out.append(row)
    return out


def ref_kl(lp: float, ref_lp: float, estimator: str) -> float:
    if estimator == "k1":
        return lp - ref_lp
    r = math.exp(ref_lp - lp)
    return (r - 1) - math.log(r)


def ref_gae(values, rewards, mask, gamma, lam):
    batch, length = values.shape
    adv = [[0.0] * length for _ in range(batch)]
    ret = [[0.0] * length for _ in range(batch)]
    for b in range(batch):
        n = int(mask[b].sum())
        last_adv = 0.0
        for t in reversed(range(n)):
            next_v = float(values[b, t + 1]) if t + 1 < n else 0.0
            delta = float(rewards[b, t]) + gamma * next_v - float(values[b, t])
            last_adv = delta + gamma * lam * last_adv
            adv[b][t] = last_adv
            ret[b][t] = last_adv + float(values[b, t])
    return adv, ret


# --------------------------------------------------------------------------
# masked_mean / masked_var / masked_whiten
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_mean_matches_loop(seed: int) -> None:
    g = gen(seed)
    x = torch.randn(5, 9, generator=g) * 3 + 1
    mask = random_mask(g, 5, 9)
    assert_close(masked_mean(x, mask), ref_mean(x, mask))
    per_row = masked_mean(x, mask, dim=1)
    expected = [ref_mean(x[b : b + 1], mask[b : b + 1]) for b in range(5)]
    assert_close(per_row, expected)


def test_masked_mean_ignores_nan_in_padding_and_empty_is_zero() -> None:
    x = torch.tensor([[1.0, 3.0, float("nan")], [float("inf"), 2.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    assert_close(masked_mean(x, mask), 2.5)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_masked_mean_bf16_uses_float32() -> None:
    x = torch.full((1, 4096), 1.0 + 2**-7, dtype=torch.bfloat16)
    out = masked_mean(x, torch.ones(1, 4096))
    assert out.dtype == torch.float32
    assert_close(out, 1.0 + 2**-7, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_matches_loop(seed: int, unbiased: bool) -> None:
    g = gen(seed)
    x = torch.randn(6, 8, generator=g) * 2 - 0.5
    mask = random_mask(g, 6, 8)
    assert_close(masked_var(x, mask, unbiased=unbiased), ref_var(x, mask, unbiased))


def test_masked_var_single_element_is_finite_zero() -> None:
    x = torch.tensor([[5.0, 7.0]])
    mask = torch.tensor([[1, 0]])
    assert masked_var(x, mask, unbiased=True).item() == 0.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_loop(seed: int, shift_mean: bool) -> None:
    g = gen(seed)
    x = torch.randn(4, 7, generator=g) * 5 + 2
    mask = random_mask(g, 4, 7)
    mu, var = ref_mean(x, mask), ref_var(x, mask, unbiased=True)
    expected = [[0.0] * 7 for _ in range(4)]
    for b in range(4):
        for t in range(7):
            if mask[b, t]:
                val = (float(x[b, t]) - mu) / math.sqrt(var + 1e-8)
                expected[b][t] = val + mu if not shift_mean else val
    out = masked_whiten(x, mask, shift_mean=shift_mean)
    assert_close(out, expected)
    if shift_mean:
        assert abs(masked_mean(out, mask).item()) < 1e-5
        assert abs(masked_var(out, mask).item() - 1.0) < 1e-4


def test_masked_whiten_constant_input_is_finite() -> None:
    x = torch.full((2, 3), 4.0)
    out = masked_whiten(x, torch.ones(2, 3))
    assert torch.isfinite(out).all()
    assert out.abs().max().item() == 0.0


# --------------------------------------------------------------------------
# logprobs / entropy
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_from_logits_matches_loop(seed: int, temperature: float) -> None:
    g = gen(seed)
    logits = torch.randn(3, 5, 11, generator=g) * 4
    labels = torch.randint(0, 11, (3, 5), generator=g)
    out = logprobs_from_logits(logits, labels, temperature)
    assert out.shape == (3, 5)
    assert_close(out, ref_logprobs(logits, labels, temperature))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_from_logits_bf16_computed_in_float32(temperature: float) -> None:
    g = gen(7)
    logits = (torch.randn(2, 4, 50, generator=g) * 6).to(torch.bfloat16)
    labels = torch.randint(0, 50, (2, 4), generator=g)
    out = logprobs_from_logits(logits, labels, temperature)
    assert out.dtype == torch.float32
    # The reference sees the same bf16-rounded logits, so only float32 error remains.
    assert_close(out, ref_logprobs(logits.float(), labels, temperature), rtol=1e-5, atol=1e-5)


def test_logprobs_bad_temperature() -> None:
    with pytest.raises(ValueError):
        logprobs_from_logits(torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), 0.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [1.0, 1.3])
def test_entropy_from_logits_matches_loop(seed: int, temperature: float) -> None:
    g = gen(seed)
    logits = torch.randn(2, 6, 9, generator=g) * 3
    out = entropy_from_logits(logits, temperature)
    assert out.shape == (2, 6)
    assert_close(out, ref_entropy(logits, temperature))


def test_entropy_extremes() -> None:
    uniform = torch.zeros(1, 1, 8)
    assert_close(entropy_from_logits(uniform), math.log(8))
    peaked = torch.tensor([[[0.0, -1e4, -1e4]]])
    out = entropy_from_logits(peaked)
    assert torch.isfinite(out).all()
    assert out.item() < 1e-6


# --------------------------------------------------------------------------
# KL
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_per_token_matches_loop(seed: int, estimator: str) -> None:
    g = gen(seed)
    lp = -torch.rand(4, 6, generator=g) * 5
    ref = -torch.rand(4, 6, generator=g) * 5
    expected = [[ref_kl(float(lp[b, t]), float(ref[b, t]), estimator) for t in range(6)] for b in range(4)]
    assert_close(kl_per_token(lp, ref, estimator), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_k3_nonnegative_and_zero_when_equal(seed: int) -> None:
    g = gen(seed)
    lp = -torch.rand(8, 16, generator=g) * 10
    ref = lp + torch.randn(8, 16, generator=g) * torch.logspace(-6, 1, 16)
    assert (kl_per_token(lp, ref, "k3") >= 0).all()
    assert (kl_per_token(lp, ref, "k1") < 0).any()  # k1 can be negative; k3 cannot
    for est in ("k1", "k3"):
        assert kl_per_token(lp, lp.clone(), est).abs().max().item() == 0.0


def test_kl_unknown_estimator() -> None:
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(torch.zeros(1, 1), torch.zeros(1, 1), "k2")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_penalized_rewards_matches_loop(seed: int, estimator: str) -> None:
    g = gen(seed)
    batch, length, coef = 5, 8, 0.05
    scores = torch.randn(batch, generator=g) * 2
    lp = -torch.rand(batch, length, generator=g) * 4
    ref = -torch.rand(batch, length, generator=g) * 4
    mask = random_mask(g, batch, length)
    exp_r = [[0.0] * length for _ in range(batch)]
    exp_kl = [[0.0] * length for _ in range(batch)]
    for b in range(batch):
        n = int(mask[b].sum())
        for t in range(n):
            k = ref_kl(float(lp[b, t]), float(ref[b, t]), estimator)
            exp_kl[b][t] = k
            exp_r[b][t] = -coef * k
        exp_r[b][n - 1] += float(scores[b])
    rewards, kl = kl_penalized_rewards(scores, lp, ref, mask, coef, estimator)
    assert_close(rewards, exp_r)
    assert_close(kl, exp_kl)


def test_score_lands_on_last_valid_token() -> None:
    scores = torch.tensor([10.0, 20.0, 30.0])
    zeros = torch.zeros(3, 4)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    rewards, kl = kl_penalized_rewards(scores, zeros, zeros, mask, kl_coef=0.1)
    expected = torch.tensor([[10.0, 0, 0, 0], [0, 0, 20.0, 0], [0, 0, 0, 30.0]])
    assert torch.equal(rewards, expected)
    assert kl.abs().max().item() == 0.0


def test_kl_penalized_rewards_all_masked_row_raises() -> None:
    zeros = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError):
        kl_penalized_rewards(torch.zeros(2), zeros, zeros, mask, kl_coef=0.1)


# --------------------------------------------------------------------------
# GAE
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_loop(seed: int, gamma: float, lam: float) -> None:
    g = gen(seed)
    batch, length = 5, 10
    values = torch.randn(batch, length, generator=g)
    rewards = torch.randn(batch, length, generator=g)
    mask = random_mask(g, batch, length)
    adv, ret = gae_advantages(values, rewards, mask, gamma, lam)
    exp_adv, exp_ret = ref_gae(values, rewards, mask, gamma, lam)
    assert_close(adv, exp_adv)
    assert_close(ret, exp_ret)


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value() -> None:
    values = torch.tensor([[0.5, -1.0, 2.0, 9.0]])
    rewards = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = gae_advantages(values, rewards, mask, gamma=1.0, lam=1.0)
    assert_close(ret, [[6.0, 5.0, 3.0, 0.0]])
    assert_close(adv, [[5.5, 6.0, 1.0, 0.0]])


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_masked_positions_do_not_leak(seed: int) -> None:
    g = gen(seed)
    batch, length = 6, 9
    values = torch.randn(batch, length, generator=g)
    rewards = torch.randn(batch, length, generator=g)
    mask = random_mask(g, batch, length)
    pad = mask == 0
    assert pad.any()
    adv, ret = gae_advantages(values, rewards, mask)
    values2 = torch.where(pad, torch.randn(batch, length, generator=g) * 1e3, values)
    rewards2 = torch.where(pad, torch.full_like(rewards, float("nan")), rewards)
    adv2, ret2 = gae_advantages(values2, rewards2, mask)
    assert torch.equal(adv, adv2)
    assert torch.equal(ret, ret2)
    assert adv[pad].abs().max().item() == 0.0
    assert ret[pad].abs().max().item() == 0.0


# --------------------------------------------------------------------------
# PPO losses
# --------------------------------------------------------------------------


def ref_policy_loss(lp, old, adv, mask, c):
    terms, clipped_flags, sq, ratios = [], [], [], []
    for b in range(lp.shape[0]):
        for t in range(lp.shape[1]):
            if not mask[b, t]:
                continue
            diff = float(lp[b, t]) - float(old[b, t])
            ratio = math.exp(diff)
            a = float(adv[b, t])
            unclipped = -a * ratio
            clipped = -a * min(max(ratio, 1 - c), 1 + c)
            terms.append(max(unclipped, clipped))
            clipped_flags.append(1.0 if clipped > unclipped else 0.0)
            sq.append(diff * diff)
            ratios.append(ratio)
    n = len(terms)
    return {
        "loss": sum(terms) / n,
        "clipfrac": sum(clipped_flags) / n,
        "approxkl": 0.5 * sum(sq) / n,
        "ratio_mean": sum(ratios) / n,
        "ratio_max": max(ratios),
    }


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cliprange", [0.2, 0.05])
def test_clipped_policy_loss_matches_loop(seed: int, cliprange: float) -> None:
    g = gen(seed)
    batch, length = 5, 8
    old = -torch.rand(batch, length, generator=g) * 3
    lp = old + torch.randn(batch, length, generator=g) * 0.3
    adv = torch.randn(batch, length, generator=g)
    mask = random_mask(g, batch, length)
    # Garbage in padding (exp() would overflow to inf) must be ignored, also by backward.
    lp = torch.where(mask.bool(), lp, torch.full_like(lp, 100.0)).requires_grad_(True)
    loss, stats = clipped_policy_loss(lp, old, adv, mask, cliprange)
    loss.backward()
    assert torch.isfinite(lp.grad).all()
    assert lp.grad[mask == 0].abs().max().item() == 0.0
    expected = ref_policy_loss(lp.detach(), old, adv, mask, cliprange)
    assert_close(loss, expected["loss"])
    for key in ("clipfrac", "approxkl", "ratio_mean", "ratio_max"):
        assert_close(stats[key], expected[key])
        assert not stats[key].requires_grad
    assert 0.0 < stats["clipfrac"].item() < 1.0


def test_policy_loss_at_ratio_one() -> None:
    g = gen(11)
    lp = (-torch.rand(4, 6, generator=g) * 3).requires_grad_(True)
    adv = torch.randn(4, 6, generator=g)
    mask = random_mask(g, 4, 6)
    loss, stats = clipped_policy_loss(lp, lp.detach().clone(), adv, mask, 0.2)
    assert_close(loss, -ref_mean(adv, mask))
    assert stats["clipfrac"].item() == 0.0
    assert stats["approxkl"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0
    loss.backward()
    # Gradient of -A*ratio at ratio 1 is -A / n on valid tokens, 0 on padding.
    n = int(mask.sum())
    assert_close(lp.grad, torch.where(mask.bool(), -adv / n, 0.0))


def test_policy_stats_ignore_padding_when_all_ratios_below_one() -> None:
    old = torch.zeros(2, 4)
    lp = torch.tensor([[-0.1, -0.3, 5.0, 5.0], [-0.2, -0.1, -0.1, -0.4]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    _, stats = clipped_policy_loss(lp, old, torch.ones(2, 4), mask, 0.2)
    assert_close(stats["ratio_max"], math.exp(-0.1))
    assert stats["ratio_max"].item() < 1.0


def ref_value_loss(v, old, ret, mask, c):
    terms, flags = [], []
    for b in range(v.shape[0]):
        for t in range(v.shape[1]):
            if not mask[b, t]:
                continue
            vv, oo, rr = float(v[b, t]), float(old[b, t]), float(ret[b, t])
            vc = min(max(vv, oo - c), oo + c)
            e1, e2 = (vv - rr) ** 2, (vc - rr) ** 2
            terms.append(max(e1, e2))
            flags.append(1.0 if e2 > e1 else 0.0)
    return 0.5 * sum(terms) / len(terms), sum(flags) / len(flags)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("cliprange_value", [0.2, 1.0])
def test_clipped_value_loss_matches_loop(seed: int, cliprange_value: float) -> None:
    g = gen(seed)
    batch, length = 5, 8
    old = torch.randn(batch, length, generator=g)
    values = old + torch.randn(batch, length, generator=g) * 0.5
    returns = torch.randn(batch, length, generator=g)
    mask = random_mask(g, batch, length)
    loss, stats = clipped_value_loss(values, old, returns, mask, cliprange_value)
    exp_loss, exp_frac = ref_value_loss(values, old, returns, mask, cliprange_value)
    assert_close(loss, exp_loss)
    assert_close(stats["vf_clipfrac"], exp_frac)
    assert not stats["vf_clipfrac"].requires_grad


def test_value_loss_unclipped_when_values_equal_old() -> None:
    v = torch.tensor([[1.0, 2.0, 3.0]])
    ret = torch.tensor([[0.0, 0.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = clipped_value_loss(v, v.clone(), ret, mask, 0.1)
    assert_close(loss, 0.5 * (1.0 + 4.0) / 2)
    assert stats["vf_clipfrac"].item() == 0.0


# --------------------------------------------------------------------------
# KL controllers
# --------------------------------------------------------------------------


def test_fixed_kl_controller() -> None:
    ctl = FixedKLController(0.1)
    ctl.update(current_kl=100.0, n_steps=1000)
    assert ctl.value == 0.1
    other = FixedKLController(0.5)
    other.load_state_dict(json.loads(json.dumps(ctl.state_dict())))
    assert other.value == 0.1


def test_adaptive_kl_controller_direction_and_formula() -> None:
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)  # err = 0.5 -> clipped to 0.2
    assert ctl.value > 0.2
    assert math.isclose(ctl.value, 0.2 * (1 + 0.2 * 256 / 10000), rel_tol=1e-12)
    before = ctl.value
    ctl.update(current_kl=5.4, n_steps=256)  # err = -0.1, unclipped
    assert ctl.value < before
    assert math.isclose(ctl.value, before * (1 - 0.1 * 256 / 10000), rel_tol=1e-12)
    before = ctl.value
    ctl.update(current_kl=6.0, n_steps=256)
    assert ctl.value == before


def test_adaptive_kl_controller_state_dict_round_trip() -> None:
    ctl = AdaptiveKLController(0.05, target=3.0, horizon=500)
    for kl in (1.0, 10.0, 2.5):
        ctl.update(kl, n_steps=64)
    state = json.loads(json.dumps(ctl.state_dict()))
    fresh = AdaptiveKLController(1.0, target=1.0, horizon=1)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == ctl.state_dict()
    ctl.update(7.0, 32)
    fresh.update(7.0, 32)
    assert fresh.value == ctl.value


def test_adaptive_kl_controller_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=1.0, horizon=0)


# --------------------------------------------------------------------------
# Score post-processing
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_missing_eos_penalty_matches_loop(seed: int) -> None:
    g = gen(seed)
    scores = torch.randn(8, generator=g)
    has_eos = torch.rand(8, generator=g) > 0.5
    has_eos[0], has_eos[1] = True, False
    out = missing_eos_penalty(scores, has_eos, 1.0)  # TRL's convention: a positive penalty is subtracted
    expected = [float(scores[b]) - (0.0 if has_eos[b] else 1.0) for b in range(8)]
    assert_close(out, expected)
    for bad in (-1.0, float("nan")):  # the opposite sign would reward responses that never end
        with pytest.raises(ValueError, match="must be >= 0"):
            missing_eos_penalty(scores, has_eos, bad)
    same = missing_eos_penalty(scores, has_eos, None)
    assert torch.equal(same, scores)
    same[0] += 1.0
    assert not torch.equal(same, scores)  # a copy, not an alias


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("mean", "std", "clip", "baseline"),
    [
        (None, None, None, 0.0),
        (0.5, 2.0, None, 0.0),
        (0.5, 2.0, 0.3, 1.0),
        (None, None, 0.5, -0.2),
    ],
)
def test_normalize_scores_matches_loop(seed: int, mean, std, clip, baseline) -> None:
    g = gen(seed)
    scores = torch.randn(10, generator=g) * 3
    expected = []
    for s in scores.tolist():
        s = s - baseline
        if mean is not None and std is not None:
            s = (s - mean) / std
        if clip is not None:
            s = min(max(s, -clip), clip)
        expected.append(s)
    assert_close(normalize_scores(scores, mean, std, clip, baseline), expected)


def test_normalize_scores_bad_std() -> None:
    with pytest.raises(ValueError):
        normalize_scores(torch.zeros(2), 0.0, 0.0)
    with pytest.raises(ValueError):
        normalize_scores(torch.zeros(2), 0.0, -1.0)


# --------------------------------------------------------------------------
# truncate_after_eos / sample_response_length
# --------------------------------------------------------------------------


def ref_truncate(ids: torch.Tensor, eos_ids: list[int], pad: int):
    out_ids, out_mask, out_has = [], [], []
    for row in ids.tolist():
        seen = False
        new_row, new_mask = [], []
        for tok in row:
            if seen:
                new_row.append(pad)
                new_mask.append(0)
            else:
                new_row.append(tok)
                new_mask.append(1)
                seen = tok in eos_ids
        out_ids.append(new_row)
        out_mask.append(new_mask)
        out_has.append(seen)
    return out_ids, out_mask, out_has


def test_truncate_after_eos_cases() -> None:
    eos, pad = 2, 0
    ids = torch.tensor(
        [
            [2, 5, 6, 7],  # EOS first
            [5, 6, 2, 7],  # EOS in the middle
            [5, 6, 7, 8],  # no EOS
            [5, 2, 9, 2],  # repeated EOS: cut at the first
            [5, 6, 7, 2],  # EOS last
        ]
    )
    out_ids, mask, has_eos = truncate_after_eos(ids, eos, pad)
    assert out_ids.tolist() == [
        [2, 0, 0, 0],
        [5, 6, 2, 0],
        [5, 6, 7, 8],
        [5, 2, 0, 0],
        [5, 6, 7, 2],
    ]
    assert mask.tolist() == [
        [1, 0, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
    ]
    assert has_eos.tolist() == [True, True, False, True, True]
    assert has_eos.dtype == torch.bool


def test_truncate_after_eos_multiple_eos_ids() -> None:
    ids = torch.tensor([[4, 9, 3, 9], [4, 3, 9, 1], [4, 5, 6, 7]])
    out_ids, mask, has_eos = truncate_after_eos(ids, [9, 3], pad_token_id=-1)
    assert out_ids.tolist() == [[4, 9, -1, -1], [4, 3, -1, -1], [4, 5, 6, 7]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, False]


def test_truncate_after_eos_pad_equals_eos() -> None:
    ids = torch.tensor([[5, 2, 7, 8]])
    out_ids, mask, _ = truncate_after_eos(ids, 2, pad_token_id=2)
    assert out_ids.tolist() == [[5, 2, 2, 2]]
    assert mask.tolist() == [[1, 1, 0, 0]]


@pytest.mark.parametrize("seed", SEEDS)
def test_truncate_after_eos_matches_loop(seed: int) -> None:
    g = gen(seed)
    ids = torch.randint(0, 6, (12, 7), generator=g)
    eos_ids, pad = [1, 4], 99
    out_ids, mask, has_eos = truncate_after_eos(ids, eos_ids, pad)
    exp_ids, exp_mask, exp_has = ref_truncate(ids, eos_ids, pad)
    assert out_ids.tolist() == exp_ids
    assert mask.tolist() == exp_mask
    assert has_eos.tolist() == exp_has


def test_truncate_after_eos_empty_eos_list() -> None:
    with pytest.raises(ValueError):
        truncate_after_eos(torch.zeros(1, 2, dtype=torch.long), [], 0)


def test_sample_response_length_bounds_and_coverage() -> None:
    g = gen(0)
    draws = [sample_response_length(g, 32, 40) for _ in range(2000)]
    assert all(isinstance(d, int) for d in draws)
    assert min(draws) == 32
    assert max(draws) == 39
    assert set(draws) == set(range(32, 40))
    # Same seed -> same sequence.
    g1, g2 = gen(123), gen(123)
    assert [sample_response_length(g1, 5, 500) for _ in range(20)] == [
        sample_response_length(g2, 5, 500) for _ in range(20)
    ]
    assert sample_response_length(gen(1), 7, 8) == 7


@pytest.mark.parametrize("high", [32, 10])
def test_sample_response_length_error(high: int) -> None:
    with pytest.raises(ValueError, match="output_max_length"):
        sample_response_length(gen(0), 32, high)


def test_leave_one_out_baseline_subtracts_the_mean_of_the_other_responses_to_the_prompt():
    scores = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 6.0])
    torch.testing.assert_close(leave_one_out_baseline(scores, 2), torch.tensor([-2.0, 2.0, 0.0, 0.0, -6.0, 6.0]))
    # Groups of 3: 1 - (3 + 2) / 2 = -1.5, 3 - 1.5 = 1.5, 2 - 2 = 0; each group sums to 0.
    out = leave_one_out_baseline(scores, 3)
    torch.testing.assert_close(out, torch.tensor([-1.5, 1.5, 0.0, -1.0, -4.0, 5.0]))
    torch.testing.assert_close(out.reshape(2, 3).sum(1), torch.zeros(2))
    same = leave_one_out_baseline(scores, 1)
    assert torch.equal(same, scores) and same is not scores
    with pytest.raises(ValueError, match="6 scores do not split into groups of 4"):
        leave_one_out_baseline(scores, 4)
