"""The PPO engine in-process with tiny models: ratio 1 at the first minibatch, padding invariance, EOS handling,
forward-call counts (checked with hooks on the real modules), config validation, static shapes, and that it learns.

Every model here is tiny (2 layers, 32 wide) and built locally; nothing touches the hub. Torch runs on one thread
(the test machines are small and shared; two threads on two busy cores were ten times slower, not faster).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlhf.data.prompt_format import PromptFormat
from rlhf.models.reward import RewardScorer
from rlhf.ppo.config import MIN_RESPONSE_LENGTH, PPOConfig
from rlhf.ppo.engine import PPOEngine
from rlhf.ppo.models import PolicyWithValue, adapter_disabled, position_ids_from_mask, response_logprobs
from rlhf.ppo.sampling import left_pad, sample
from rlhf.runtime.distributed import all_finite, ppo_optimizer
from rlhf.scripts.rl_training import PPOModelArguments
from tiny import ORCA_ROWS, build_llama, build_tokenizer

# Log-probs/values of the same tokens computed in differently shaped batches (other rows, other padding) agree to
# float32 rounding (observed <= 1e-6); 1e-5 is far below what a real bug does (attending to a pad token or wrong
# absolute positions move log-probs by > 1e-3, checked below).
TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.fixture(scope="module")
def fmt(tokenizer) -> PromptFormat:
    return PromptFormat("chat", tokenizer.eos_token, tokenizer.chat_template)


@pytest.fixture(scope="module")
def reward_model(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(123)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    return LlamaForSequenceClassification(config).eval()


def prompts(tokenizer, fmt, n: int = 8) -> list[dict]:
    """``n`` prompts cycling over the four Orca rows (prompt lengths differ, so the batch is left-padded)."""
    out = []
    for i in range(n):
        row = ORCA_ROWS[i % len(ORCA_ROWS)]
        text = fmt.render_prompt(row["system"], row["question"], tokenizer)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append({"system": row["system"], "question": row["question"], "prompt_ids": ids})
    assert len({len(p["prompt_ids"]) for p in out}) > 1
    return out


def make_engine(
    model_dir: Path,
    tokenizer,
    scorer,
    seed: int = 0,
    lr: float = 1.41e-5,
    peft: bool = True,
    mixed_precision: str = "no",
    lora_layers: str | None = None,
    **overrides,
) -> PPOEngine:
    """The objects rl_training.main builds, on one CPU process (``mixed_precision``: no or bf16 autocast)."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    settings = {
        "batch_size": 8,
        "mini_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "ppo_epochs": 2,
        "output_max_length": 40,
        "learning_rate": lr,
        **overrides,
    }
    cfg = PPOConfig(**settings)
    cfg.validate()
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_pretrained(str(model_dir))
    ref_model = None
    if peft:
        from peft import get_peft_model

        args = PPOModelArguments(model_name_or_path=str(model_dir), lora_layers=lora_layers)
        lm = get_peft_model(lm, args.peft_config("CAUSAL_LM"))
    else:
        import copy

        ref_model = copy.deepcopy(lm).eval().requires_grad_(False)
    policy = PolicyWithValue(lm)
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.learning_rate)
    accelerator = Accelerator(
        cpu=True, mixed_precision=mixed_precision, gradient_accumulation_steps=cfg.gradient_accumulation_steps
    )
    policy, optimizer = accelerator.prepare(policy, optimizer)
    engine = PPOEngine(cfg, accelerator, policy, optimizer, tokenizer, scorer, ref_model, None, seed)
    torch.manual_seed(seed)
    return engine


@pytest.fixture()
def engine_factory(tiny_dir, tokenizer, fmt, reward_model):
    def build(**kwargs) -> PPOEngine:
        scorer = kwargs.pop("scorer", None) or RewardScorer(reward_model, tokenizer, fmt)
        return make_engine(kwargs.pop("model_dir", tiny_dir), tokenizer, scorer, **kwargs)

    return build


# ---------------------------------------------------------------------------------------------------- ratio & KL


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_first_minibatch_ratio_is_one_and_kl_zero_for_fresh_lora(
    engine_factory, tokenizer, fmt, tiny_dir, mixed_precision
):
    """In fp32 and under bf16 autocast: every forward of the step (sampling, policy, reference, reward) runs in the
    same precision context, so the reference equals the policy exactly before the first update."""
    engine = engine_factory(lr=3e-3, mixed_precision=mixed_precision)
    batch = prompts(tokenizer, fmt)
    stats, ro = engine.step(batch)
    # Fresh LoRA: B = 0, so policy == reference exactly and the per-token KL is 0.
    assert engine.first_minibatch_max_abs_logratio < 1e-5
    assert stats["policy/first_minibatch_max_abs_logratio"] < 1e-5
    assert ro.kl[ro.response_mask].abs().max().item() < 1e-5
    assert abs(stats["objective/kl"]) < 1e-4
    torch.testing.assert_close(ro.logprobs[ro.response_mask], ro.ref_logprobs[ro.response_mask], rtol=0, atol=TOL)

    # After an update the policy differs from the reference; the first minibatch of the next step must still see
    # ratio 1 (old log-probs come from the same network in the same mode), while KL is now non-zero.
    stats, ro = engine.step(batch)
    assert engine.first_minibatch_max_abs_logratio < 1e-5
    assert ro.kl[ro.response_mask].abs().max().item() > 1e-4
    assert math.isfinite(stats["objective/kl"])

    # The reference is the base model: the adapter really is switched off for it.
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed_precision == "bf16"):
        logits = base(input_ids=ro.input_ids, attention_mask=ro.attention_mask, position_ids=ro.position_ids).logits
    base_lp, _ = response_logprobs(logits.float(), ro.input_ids, ro.prompt_width, engine.config.temperature)
    torch.testing.assert_close(ro.ref_logprobs[ro.response_mask], base_lp[ro.response_mask], rtol=0, atol=TOL)
    assert (ro.logprobs - base_lp)[ro.response_mask].abs().max().item() > 1e-4


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_first_minibatch_ratio_is_one_full_finetune(engine_factory, tokenizer, fmt, mixed_precision):
    engine = engine_factory(peft=False, lr=1e-3, mixed_precision=mixed_precision)
    batch = prompts(tokenizer, fmt)
    stats, ro = engine.step(batch)
    assert engine.first_minibatch_max_abs_logratio < 1e-5
    assert ro.kl[ro.response_mask].abs().max().item() < 1e-5  # frozen copy == policy before the first update
    engine.step(batch)
    assert engine.first_minibatch_max_abs_logratio < 1e-5


# ---------------------------------------------------------------------------------------------------- padding


def tiny_gpt2():
    """A 2-layer GPT-2: absolute position embeddings, where wrong position ids under left padding DO matter."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=400, n_positions=64, n_embd=32, n_layer=2, n_head=4))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logprobs_and_values_do_not_depend_on_left_padding(tiny_dir, arch):
    """One sequence alone vs. left-padded next to a longer one (and right-padded after its response).

    Tolerance: 1e-5 absolute on log-probs and values (float32).
    """
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(tiny_dir)) if arch == "llama" else tiny_gpt2()
    with torch.no_grad():  # random init attends almost uniformly; sharpen attention so context matters
        for name, param in lm.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "c_attn.weight")):
                param.mul_(20.0)
    lm.eval()
    policy = PolicyWithValue(lm).eval()
    torch.nn.init.normal_(policy.value_head.weight, std=1.0)  # the zero-ish init would make values trivially equal
    g = torch.Generator().manual_seed(0)
    short_prompt = torch.randint(5, 390, (5,), generator=g)
    long_prompt = torch.randint(5, 390, (13,), generator=g)
    response = torch.randint(5, 390, (7,), generator=g)
    pad = 3

    def run(ids: torch.Tensor, mask: torch.Tensor, width: int, position_ids: torch.Tensor | None = None):
        position_ids = position_ids_from_mask(mask) if position_ids is None else position_ids
        with torch.no_grad():
            logits, values = policy(ids, mask, position_ids)
        lp, _ = response_logprobs(logits, ids, width, temperature=0.7)
        return lp, values[:, width - 1 : -1]

    # Alone: no padding at all.
    alone_ids = torch.cat([short_prompt, response]).unsqueeze(0)
    lp_alone, v_alone = run(alone_ids, torch.ones_like(alone_ids), len(short_prompt))

    # Batched: row 0 = short prompt left-padded to 13; row 1 = long prompt with a 4-token response right-padded.
    width = len(long_prompt)
    row0 = torch.cat([torch.full((width - len(short_prompt),), pad), short_prompt, response])
    row1 = torch.cat([long_prompt, response[:4], torch.full((3,), pad)])
    ids = torch.stack([row0, row1])
    mask = torch.ones_like(ids)
    mask[0, : width - len(short_prompt)] = 0
    mask[1, width + 4 :] = 0
    lp_batch, v_batch = run(ids, mask, width)
    torch.testing.assert_close(lp_batch[0], lp_alone[0], rtol=0, atol=TOL)
    torch.testing.assert_close(v_batch[0], v_alone[0], rtol=0, atol=TOL)
    assert v_alone.abs().max() > 1e-2  # values are not trivially zero

    # Row 1's real response tokens equal the same sequence without the right padding.
    solo1 = torch.cat([long_prompt, response[:4]]).unsqueeze(0)
    lp1, v1 = run(solo1, torch.ones_like(solo1), width)
    torch.testing.assert_close(lp_batch[1, :4], lp1[0], rtol=0, atol=TOL)
    torch.testing.assert_close(v_batch[1, :4], v1[0], rtol=0, atol=TOL)

    # The check has teeth: attending to the pads changes the result, and so do naive position ids for a model
    # with absolute positions (RoPE is shift-invariant, so for Llama they happen not to matter).
    lp_attend_pads, _ = run(ids, torch.ones_like(ids), width)
    assert (lp_attend_pads[0] - lp_alone[0]).abs().max() > 1e-3
    if arch == "gpt2":
        lp_naive, _ = run(ids, mask, width, torch.arange(ids.shape[1]).expand_as(ids))
        assert (lp_naive[0] - lp_alone[0]).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------- EOS


def test_a_minibatch_drops_the_padding_its_rows_share_and_learns_exactly_the_same(engine_factory, tokenizer, fmt):
    """The update trains each minibatch on its own columns: not the left padding all its rows share, nor the
    response positions after all its rows ended. Padding is masked everywhere, so the losses and every gradient are
    those of the full-width minibatch (float32; 1e-5 relative to the largest gradient entry)."""
    from rlhf.ppo.engine import StepStats

    engine = engine_factory(peft=False, lr=1e-3, mixed_precision="no")
    ro = engine.rollout(prompts(tokenizer, fmt))
    width = ro.input_ids.shape[1]
    left = (ro.attention_mask.cumsum(1) == 0).sum(1)
    rows = torch.tensor([0, 2])  # two left-padded prompts of different lengths (the four prompts cycle)
    assert int(left[0]) != int(left[2])
    ro.samples.response_mask[rows, 3:] = False  # their responses ended early (as after an EOS): a right margin
    start, stop = engine._minibatch_columns(ro, engine._row_spans(ro), rows)
    assert start == int(left[rows].min()) > 0 and stop == ro.prompt_width + 3 < width

    def trained(columns):
        engine.optimizer.zero_grad(set_to_none=True)
        stats = StepStats()
        engine._train_minibatch(ro, rows, stats, columns)
        grads = [p.grad.clone() for p in engine.policy.parameters() if p.grad is not None]
        return stats.summary(), grads

    full_stats, full_grads = trained((0, width))
    cut_stats, cut_grads = trained((start, stop))
    scale = max(g.abs().max().item() for g in full_grads)
    assert scale > 0
    for full, cut in zip(full_grads, cut_grads, strict=True):
        torch.testing.assert_close(cut, full, rtol=0, atol=1e-5 * scale)
    for key in ("loss/policy_avg", "loss/value_avg", "policy/approxkl_avg", "val/vpred"):
        assert cut_stats[key] == pytest.approx(full_stats[key], rel=1e-5, abs=1e-7), key


def test_static_shapes_and_a_device_that_compiles_per_shape_keep_the_rollout_width(engine_factory, tokenizer, fmt):
    """Gaudi's lazy mode compiles a graph per shape, and --static_shapes asks for one shape: there every minibatch
    keeps the rollout's one width."""
    from rlhf.runtime.gaudi import GaudiRuntime

    engine = engine_factory(peft=False, lr=1e-3)
    ro = engine.rollout(prompts(tokenizer, fmt))
    rows = torch.tensor([0, 2])  # the two longest-padded prompts of the four (prompts cycle)
    assert engine._minibatch_columns(ro, engine._row_spans(ro), rows) != (0, ro.input_ids.shape[1])
    engine.runtime = GaudiRuntime(None, None)
    assert engine._minibatch_columns(ro, engine._row_spans(ro), rows) == (0, ro.input_ids.shape[1])
    static = engine_factory(peft=False, lr=1e-3, static_shapes=True, max_prompt_length=64)
    ro = static.rollout(prompts(tokenizer, fmt))
    assert static._minibatch_columns(ro, static._row_spans(ro), rows) == (0, ro.input_ids.shape[1])


def eos_bias_hook(engine: PPOEngine, bias: float):
    """Make the policy emit EOS often: add ``bias`` to the EOS logit of every forward (generation included)."""
    head = engine.unwrapped.lm.get_base_model().lm_head
    eos = engine.tokenizer.eos_token_id

    def hook(module, args, output):
        output = output.clone()
        output[..., eos] += bias
        return output

    return head.register_forward_hook(hook)


def test_rollout_cuts_after_first_eos_and_penalises_missing_eos(engine_factory, tokenizer, fmt):
    engine = engine_factory(response_length=40, missing_eos_penalty=1.0)
    handle = eos_bias_hook(engine, 2.5)  # p(EOS) ~ 3% per token: some rows stop, some do not
    try:
        ro = engine.rollout(prompts(tokenizer, fmt))
    finally:
        handle.remove()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    responses = ro.input_ids[:, ro.prompt_width :]
    assert ro.has_eos.any() and not ro.has_eos.all(), "the fixed seed should give both kinds of rows"
    for i in range(len(responses)):
        row, mask = responses[i], ro.response_mask[i]
        eos_positions = (row == eos).nonzero().flatten().tolist()
        if ro.has_eos[i]:
            first = eos_positions[0]
            assert mask[: first + 1].all() and not mask[first + 1 :].any()
            assert (row[first + 1 :] == pad).all()
            assert ro.responses[i].endswith(tokenizer.eos_token)
            assert ro.responses[i].count(tokenizer.eos_token) == 1
        else:
            assert not eos_positions
            assert mask.all()
            assert not ro.responses[i].endswith(tokenizer.eos_token)
    # The attention mask of the response part is the response mask; masked positions carry no KL or reward.
    assert torch.equal(ro.attention_mask[:, ro.prompt_width :].bool(), ro.response_mask)
    assert (ro.kl[~ro.response_mask] == 0).all() and (ro.rewards[~ro.response_mask] == 0).all()
    # Missing-EOS penalty (TRL's sign: a positive number is subtracted): exactly the rows without EOS lose 1.
    expected = ro.raw_scores - torch.where(ro.has_eos, 0.0, 1.0)
    torch.testing.assert_close(ro.scores, expected)
    # The score lands on the last real token (EOS for rows that stopped).
    last = ro.response_mask.long().sum(1) - 1
    rows = torch.arange(len(last))
    torch.testing.assert_close(ro.rewards[rows, last] + engine.kl_ctl.value * ro.kl[rows, last], ro.scores)


def test_ignore_eos_keeps_every_response_at_full_length(engine_factory, tokenizer, fmt):
    """--ignore_eos (fixed-length rollouts, used by the benchmarks): EOS is sampled like any token, nothing is cut."""
    engine = engine_factory(response_length=24, ignore_eos=True)
    handle = eos_bias_hook(engine, 4.0)  # p(EOS) ~ 15% per token: most rows sample it somewhere mid-response
    try:
        ro = engine.rollout(prompts(tokenizer, fmt))
    finally:
        handle.remove()
    responses = ro.input_ids[:, ro.prompt_width :]
    assert responses.shape[1] == 24 and ro.response_mask.all()
    eos = tokenizer.eos_token_id
    mid = [(row[:-1] == eos).any().item() for row in responses]
    assert any(mid), "the fixed seed should sample EOS before the last position"
    assert ro.attention_mask[:, ro.prompt_width :].bool().all()
    for i in range(len(responses)):
        if mid[i]:  # the sampled tokens after an EOS are kept, attended to, and carry log-probs
            first = (responses[i] == eos).nonzero().flatten()[0]
            assert (responses[i][first + 1 :] != tokenizer.pad_token_id).any()
            assert (ro.logprobs[i, first + 1 :] < 0).all()
            assert ro.responses[i].index(tokenizer.eos_token) < len(ro.responses[i]) - len(tokenizer.eos_token)


def test_whiten_rewards_rescales_the_batch_rewards_before_gae(engine_factory, tokenizer, fmt):
    """--whiten_rewards (TRL's, off by default): per-token rewards of the batch scaled to unit variance with their
    mean kept, before GAE; the same samples without it keep the raw rewards."""
    from rlhf.ppo.math import gae_advantages, masked_mean, masked_var, masked_whiten

    plain = engine_factory(response_length=12).rollout(prompts(tokenizer, fmt))
    white = engine_factory(response_length=12, whiten_rewards=True).rollout(prompts(tokenizer, fmt))
    assert torch.equal(plain.input_ids, white.input_ids)  # same seed: the same samples, scores and KL
    mask = plain.response_mask
    assert abs(masked_var(plain.rewards, mask).item() - 1.0) > 0.5  # the raw rewards are far from unit variance...
    torch.testing.assert_close(white.rewards, masked_whiten(plain.rewards, mask, shift_mean=False))
    torch.testing.assert_close(masked_var(white.rewards, mask), torch.tensor(1.0))  # ...the whitened ones are not
    torch.testing.assert_close(masked_mean(white.rewards, mask), masked_mean(plain.rewards, mask))
    _, returns = gae_advantages(white.values, white.rewards, mask, 1.0, 0.95)
    torch.testing.assert_close(white.returns, returns)  # GAE ran on the whitened rewards
    assert not PPOConfig().whiten_rewards


def test_reward_model_scores_the_policys_own_token_ids(engine_factory, tokenizer, fmt, reward_model):
    """Same tokenizer and prompt format: the reward model reads the ids the policy sampled, not a decode -> encode
    round trip of them, which changes the ids (and the score) on rows whose text does not round-trip."""
    from rlhf.models.reward import score_sequences

    own, text = RewardScorer(reward_model, tokenizer, fmt), RewardScorer(reward_model, tokenizer, fmt)
    assert own.accepts_ids_of(tokenizer, fmt)
    assert own.reads_policy_ids and not text.reads_policy_ids
    batch = prompts(tokenizer, fmt)
    ro = engine_factory(response_length=16, scorer=own).rollout(batch)
    responses = ro.input_ids[:, ro.prompt_width :]
    sampled = [b["prompt_ids"] + r[m].tolist() for b, r, m in zip(batch, responses, ro.response_mask, strict=True)]
    torch.testing.assert_close(ro.raw_scores, score_sequences(reward_model, sampled, tokenizer.pad_token_id))
    retokenized = [text.token_ids(b["system"], b["question"], t) for b, t in zip(batch, ro.responses, strict=True)]
    differ = [i for i in range(len(batch)) if retokenized[i] != sampled[i]]
    assert differ, "a random tiny policy samples token sequences that BPE re-encodes differently"
    via_text = text([b["system"] for b in batch], [b["question"] for b in batch], ro.responses)
    assert all(abs(via_text[i] - ro.raw_scores[i]) > 1e-6 for i in differ)
    # Without the policy's tokenizer (or with another format) the scorer takes the text path, as before.
    ro_text = engine_factory(response_length=16, scorer=text).rollout(batch)
    assert torch.equal(ro_text.input_ids, ro.input_ids)
    torch.testing.assert_close(ro_text.raw_scores, via_text)


def test_same_tokenization_tells_tokenizers_apart(tiny_dir, tokenizer, fmt, tmp_path, reward_model):
    from transformers import AutoTokenizer

    from rlhf.models.reward import same_tokenization

    again = AutoTokenizer.from_pretrained(str(tiny_dir))
    again.padding_side = "left"  # padding settings do not change the ids
    assert same_tokenization(tokenizer, again)
    other = build_tokenizer(tmp_path / "other", extra_text=["an entirely different corpus of words"] * 5)
    assert not same_tokenization(tokenizer, other)
    plain = PromptFormat("plain", tokenizer.eos_token)
    assert not RewardScorer(reward_model, tokenizer, fmt).accepts_ids_of(tokenizer, plain)
    assert not RewardScorer(reward_model, tokenizer, fmt).accepts_ids_of(other, fmt)


def test_all_finite_finds_one_bad_value_among_many_tensors():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    grads = [torch.randn(7, 5), torch.randn(3), torch.randn(2, 2, 2)]
    assert all_finite(accelerator, grads) and all_finite(accelerator, [])
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = [g.clone() for g in grads]
        broken[1][2] = bad
        assert not all_finite(accelerator, broken)


def test_ppo_optimizer_on_a_cpu_is_fused_adam_and_steps_like_the_multi_tensor_adam():
    """Fused Adam (several times faster on a CPU) takes the same steps as the foreach Adam it replaced."""
    from accelerate import Accelerator

    g = torch.Generator().manual_seed(0)
    start = [torch.randn(6, 4, generator=g), torch.randn(5, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in start] for _ in range(3)]
    fused = [torch.nn.Parameter(t.clone()) for t in start]
    plain = [torch.nn.Parameter(t.clone()) for t in start]
    optimizer = ppo_optimizer(Accelerator(cpu=True), fused, lr=1e-2, adafactor=False)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"]
    reference = torch.optim.Adam(plain, lr=1e-2, foreach=True)
    for step in grads:
        for params, opt in ((fused, optimizer), (plain, reference)):
            for p, grad in zip(params, step, strict=True):
                p.grad = grad.clone()
            opt.step()
    for a, b, s in zip(fused, plain, start, strict=True):
        assert not torch.equal(a, s)  # it moved
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_response_logprobs_from_response_logits_only_match_the_full_logits():
    """The engine asks the LM head for the response positions only (logits_to_keep = T + 1); same log-probs."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (3, 11), generator=g)
    logits = torch.randn(3, 11, 50, generator=g)
    width = 6  # prompt of 6, response of 5: the last 6 positions' logits predict the 5 response tokens
    full_lp, full_ent = response_logprobs(logits, ids, width, temperature=0.7)
    kept_lp, kept_ent = response_logprobs(logits[:, -(11 - width + 1) :], ids, width, temperature=0.7)
    assert full_lp.shape == (3, 5)
    torch.testing.assert_close(kept_lp, full_lp, rtol=0, atol=0)
    torch.testing.assert_close(kept_ent, full_ent, rtol=0, atol=0)


@pytest.fixture(scope="module")
def opinionated_dir(tmp_path_factory, tiny_dir) -> Path:
    """The tiny model with a generation_config.json that reshapes sampling, like many chat checkpoints do
    (Qwen2.5-Instruct ships repetition_penalty 1.05, top_k 20, top_p 0.8, temperature 0.7); extreme values here."""
    import shutil

    folder = tmp_path_factory.mktemp("tiny-opinionated")
    for path in tiny_dir.iterdir():
        shutil.copy(path, folder / path.name)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(
        {
            "suppress_tokens": list(range(4, 390)),
            "no_repeat_ngram_size": 1,
            "repetition_penalty": 10.0,
            "min_p": 0.9,
            "top_k": 5,
            "top_p": 0.5,
            "temperature": 0.1,
            "do_sample": False,
        }
    )
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("peft", [True, False])
def test_sampling_ignores_the_checkpoints_generation_config(engine_factory, opinionated_dir, tokenizer, fmt, peft):
    """Responses are drawn from softmax(logits / --temperature) alone: the log-probs PPO uses are those of the
    sampling distribution only if no processor from generation_config.json (penalties, suppressed tokens, min_p,
    top-k/p) reshapes it."""
    engine = engine_factory(model_dir=opinionated_dir, response_length=40, peft=peft)
    ro = engine.rollout(prompts(tokenizer, fmt))
    tokens = ro.input_ids[:, ro.prompt_width :][ro.response_mask]
    suppressed = ((tokens >= 4) & (tokens < 390)).float().mean().item()
    assert suppressed > 0.8  # ~96% of a near-uniform 400-token vocabulary
    responses = ro.input_ids[:, ro.prompt_width :]
    rows = zip(responses, ro.response_mask, strict=True)
    assert any(len(set(row[mask].tolist())) < int(mask.sum()) for row, mask in rows)  # a token repeats somewhere
    # The checkpoint's own settings are left as they were.
    lm = engine.unwrapped.lm
    assert (lm.get_base_model() if peft else lm).generation_config.repetition_penalty == 10.0


def test_response_length_sampler_bounds(engine_factory, tokenizer, fmt):
    engine = engine_factory(output_max_length=36)
    lengths = [engine.response_length() for _ in range(300)]
    assert min(lengths) == MIN_RESPONSE_LENGTH and max(lengths) == 35
    assert all(MIN_RESPONSE_LENGTH <= n < 36 for n in lengths)
    # A real rollout never generates more than the drawn length.
    engine = engine_factory(output_max_length=36)
    probe = engine_factory(output_max_length=36)  # same seed: the same next draw
    drawn = probe.response_length()
    ro = engine.rollout(prompts(tokenizer, fmt))
    assert ro.input_ids.shape[1] - ro.prompt_width <= drawn
    fixed = engine_factory(response_length=7)
    assert {fixed.response_length() for _ in range(20)} == {7}


# ---------------------------------------------------------------------------------------------------- forward counts


class EnginePhases:
    """Knows which phase of a step an engine is in (generate / rollout / update): its ``_generate`` and ``update``
    are wrapped to set ``phase``."""

    def __init__(self, engine: PPOEngine) -> None:
        self.phase = "rollout"
        for phase, method in (("generate", "_generate"), ("update", "update")):
            setattr(engine, method, self._in_phase(phase, getattr(engine, method)))

    def _in_phase(self, phase: str, fn):
        def wrapped(*args, **kwargs):
            previous, self.phase = self.phase, phase
            try:
                return fn(*args, **kwargs)
            finally:
                self.phase = previous

        return wrapped


class ForwardLog(EnginePhases):
    """Forward hooks on the real modules, each call tagged with the engine phase (generate / rollout / update) and
    whether the LoRA adapter was switched off at the time."""

    def __init__(self, engine: PPOEngine, reward_model: torch.nn.Module) -> None:
        super().__init__(engine)
        self.events: list[tuple[str, str, int, bool]] = []
        peft_lm = engine.unwrapped.lm
        self.lora_layers = [m for m in peft_lm.modules() if hasattr(m, "lora_A")]
        assert self.lora_layers
        modules = {
            "lm": peft_lm.get_base_model().model,
            "value_head": engine.unwrapped.value_head,
            "reward": reward_model,
        }
        self.handles = [m.register_forward_hook(self._hook(name), with_kwargs=True) for name, m in modules.items()]

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            ids = kwargs["input_ids"] if kwargs.get("input_ids") is not None else args[0]
            adapters_off = all(layer.disable_adapters for layer in self.lora_layers)
            self.events.append((self.phase, name, ids.shape[0], adapters_off))

        return hook

    def calls(self, phase: str, name: str) -> list[tuple[int, bool]]:
        """(batch size, adapter off) of each call of module ``name`` during ``phase``."""
        return [(size, off) for p, n, size, off in self.events if p == phase and n == name]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("forward_batch_size", [None, 3])
def test_forward_counts_per_rollout_and_update(engine_factory, tokenizer, fmt, reward_model, forward_batch_size):
    engine = engine_factory(forward_batch_size=forward_batch_size, ppo_epochs=3, response_length=33)
    log = ForwardLog(engine, reward_model)
    try:
        engine.step(prompts(tokenizer, fmt))
    finally:
        log.close()

    chunks = [3, 3, 2] if forward_batch_size == 3 else [8]
    lm_calls = log.calls("rollout", "lm")
    # Policy: one network forward per chunk, whose hidden states also give the values (value head once per chunk,
    # no extra network pass); reference: one forward per chunk with the adapter switched off.
    assert [size for size, off in lm_calls if not off] == chunks
    assert [size for size, _ in log.calls("rollout", "value_head")] == chunks
    assert [size for size, off in lm_calls if off] == chunks
    assert len(lm_calls) == 2 * len(chunks)
    # Reward model: once per rollout chunk (once per rollout by default); never elsewhere.
    assert [size for size, _ in log.calls("rollout", "reward")] == chunks
    assert log.calls("update", "reward") == [] and log.calls("generate", "reward") == []
    # Update: ppo_epochs x (batch / mini) policy forwards of mini_batch_size rows each, adapter on.
    cfg = engine.config
    expected = cfg.ppo_epochs * cfg.batch_size // cfg.mini_batch_size
    assert log.calls("update", "lm") == [(cfg.mini_batch_size, False)] * expected
    assert len(log.calls("update", "value_head")) == expected
    # Generation uses the LM (many calls) but never the value head.
    assert log.calls("generate", "lm") and not log.calls("generate", "value_head")
    # The engine's own counters agree with the hooks.
    assert dict(engine.forward_calls) == {"policy": len(chunks), "reference": len(chunks), "reward": len(chunks)}


@pytest.mark.parametrize("early_stopping", [True, False])
def test_early_stopping_ends_the_epochs_after_one_optimizer_step(
    engine_factory, tokenizer, fmt, reward_model, early_stopping
):
    """With --early_stopping and a target_kl no update can stay under, the update stops after its first optimizer
    step (gradient_accumulation_steps minibatches); without it, all ppo_epochs x batch/mini minibatches run."""
    engine = engine_factory(lr=1e-2, early_stopping=early_stopping, target_kl=1e-12, ppo_epochs=3)
    log = ForwardLog(engine, reward_model)
    try:
        stats, _ = engine.step(prompts(tokenizer, fmt))
    finally:
        log.close()
    cfg = engine.config
    # approx KL is measured on the minibatches of the first optimizer step, before that step changes anything:
    # it is ~0, so the stop comes after the second optimizer step.
    expected = 2 * cfg.gradient_accumulation_steps if early_stopping else cfg.ppo_epochs * cfg.batch_size // 2
    assert len(log.calls("update", "value_head")) == expected
    assert stats["ppo/early_stopped"] == float(early_stopping)


# ---------------------------------------------------------------------------------------------------- validation


def test_samples_per_prompt_scores_each_response_against_the_others_of_its_prompt(engine_factory, tokenizer, fmt):
    """--samples_per_prompt 2: the batch holds each prompt twice in a row (PPORun.next_batch); each response's score is
    its raw score minus the other response's, so a pair's scores sum to 0 and the advantages rank within a prompt."""
    engine = engine_factory(samples_per_prompt=2)
    batch = prompts(tokenizer, fmt)[:4]
    batch = [row for row in batch for _ in range(2)]
    _, ro = engine.step(batch)
    raw, scores = ro.raw_scores, ro.scores
    torch.testing.assert_close(scores[0::2], raw[0::2] - raw[1::2])
    torch.testing.assert_close(scores[1::2], raw[1::2] - raw[0::2])
    # The two responses to one prompt were sampled independently, not copied.
    assert any(not torch.equal(ro.input_ids[i], ro.input_ids[i + 1]) for i in range(0, 8, 2))


def test_a_step_s_batch_repeats_each_prompt_samples_per_prompt_times_in_a_row():
    from types import SimpleNamespace

    from rlhf.data.prompts import PromptSampler
    from rlhf.ppo.trainer import PPORun

    prompts_ = [{"question": f"q{i}"} for i in range(10)]
    sampler = PromptSampler(10, per_rank=2, world_size=1, rank=0, seed=0)
    run = PPORun(
        *[None] * 2,
        SimpleNamespace(config=PPOConfig(batch_size=6, samples_per_prompt=3)),
        sampler,
        prompts_,
        *[None] * 6,
    )
    batch = run.next_batch()
    assert len(batch) == 6 and batch[0] is batch[1] is batch[2] and batch[3] is batch[4] is batch[5]
    assert batch[0] is not batch[3]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 6, "mini_batch_size": 2, "gradient_accumulation_steps": 2}, "must be a multiple of"),
        ({"output_max_length": 32}, "--output_max_length 32"),
        ({"output_max_length": 10}, "--response_length"),
        ({"kl_estimator": "k2"}, "--kl_estimator"),
        ({"mini_batch_size": 0}, "--mini_batch_size"),
        ({"temperature": 0.0}, "--temperature"),
        ({"response_length": 0}, "--response_length"),
        ({"forward_batch_size": -1}, "--forward_batch_size"),
        ({"reward_clip": 0.0}, "--reward_clip"),
        ({"lam": 1.5}, "--lam"),
        ({"gamma": -0.1}, "--gamma"),
        ({"missing_eos_penalty": -1.0}, "--missing_eos_penalty -1.0: expected a positive number"),
        (
            {"batch_size": 8, "samples_per_prompt": 3},
            "--samples_per_prompt 3: expected a positive divisor of --batch_size 8",
        ),
        ({"samples_per_prompt": 0}, "--samples_per_prompt 0"),
        ({"response_length": 32, "response_length_quantile": 0.99}, "--response_length and --response_length_quantile"),
        ({"response_length_quantile": 0.0}, "--response_length_quantile: expected a value in"),
        ({"response_length_quantile": 1.5}, "--response_length_quantile"),
    ],
)
def test_config_validate_errors(overrides, message):
    with pytest.raises(ValueError, match=message.replace("-", r"\-")):
        PPOConfig(**overrides).validate()


def test_config_validate_accepts_reference_values():
    PPOConfig(batch_size=8, mini_batch_size=1, gradient_accumulation_steps=8, output_max_length=128).validate()
    PPOConfig(
        batch_size=8, mini_batch_size=2, gradient_accumulation_steps=2, output_max_length=10, response_length=10
    ).validate()
    PPOConfig(forward_batch_size=3, reward_clip=5.0, gamma=1.0, lam=0.0).validate()
    PPOConfig().validate()  # the reference defaults: batch 32 = 1 x 4 x 8
    assert PPOConfig(steps=20000, batch_size=8).num_steps(world_size=8) == 313  # ceil(20000 / 64)


# ---------------------------------------------------------------------------------------------------- static shapes


def test_static_shapes_match_dynamic_shapes(engine_factory, tokenizer, fmt):
    batch = prompts(tokenizer, fmt)
    results = {}
    for static in (False, True):
        engine = engine_factory(static_shapes=static, max_prompt_length=48, response_length=36)
        handle = eos_bias_hook(engine, 2.5)  # some rows stop early, so response padding is exercised too
        try:
            results[static] = engine.rollout(batch)
        finally:
            handle.remove()
    dyn, sta = results[False], results[True]
    assert sta.prompt_width == 48 and sta.input_ids.shape[1] == 48 + 36
    assert dyn.prompt_width < 48
    n = dyn.response_mask.shape[1]
    assert torch.equal(sta.response_mask[:, :n], dyn.response_mask) and not sta.response_mask[:, n:].any()
    mask = dyn.response_mask
    assert torch.equal(sta.input_ids[:, sta.prompt_width :][:, :n][mask], dyn.input_ids[:, dyn.prompt_width :][mask])
    assert sta.responses == dyn.responses
    for name in ("logprobs", "ref_logprobs", "values"):
        torch.testing.assert_close(
            getattr(sta, name)[:, :n][mask], getattr(dyn, name)[mask], rtol=0, atol=TOL, msg=name
        )
    torch.testing.assert_close(sta.raw_scores, dyn.raw_scores, rtol=0, atol=TOL)
    torch.testing.assert_close(sta.advantages[:, :n][mask], dyn.advantages[mask], rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- it learns

MARKERS = [f"<|m{i}|>" for i in range(40)]


@pytest.fixture(scope="module")
def marker_dir(tmp_path_factory) -> Path:
    """A tiny Llama with 40 extra special 'marker' tokens (~10% of the vocabulary) that the policy can steer toward.

    A random 32-wide model's output rows are too small (std 0.02) for its hidden state to move any logit much. The
    markers' output rows are set to one shared direction ``u`` (norm 1), so pushing the hidden state along ``u``
    raises all of them at once: a reward a tiny model can chase in a few steps.
    """
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-markers")
    tok = build_tokenizer(folder)
    tok.add_special_tokens({"additional_special_tokens": MARKERS})
    tok.save_pretrained(str(folder))
    build_llama(folder, tok)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    u = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.lm_head.weight[tok.convert_tokens_to_ids(MARKERS)] = u / u.norm()
    model.save_pretrained(str(folder))
    return folder


class MarkerScorer:
    """Reward = fraction of marker tokens in the response (special tokens survive decode/encode exactly)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids = set(tokenizer.convert_tokens_to_ids(MARKERS))

    def __call__(self, systems, questions, responses) -> torch.Tensor:
        scores = []
        for text in responses:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            scores.append(sum(i in self.ids for i in ids) / max(len(ids), 1))
        return torch.tensor(scores)


LEARNING_STEPS = 32


def learning_run(marker_dir: Path, seed: int, mixed_precision: str) -> list[dict]:
    """32 PPO steps (LoRA, batch 8, 8-token responses) against the marker reward, with the engine's defaults for
    everything that keeps PPO stable (gradient clipping at 1.0, linear learning-rate decay over the run, 4 PPO
    epochs, adaptive KL control, advantage whitening). Set here: the sizes, a learning rate for a tiny randomly
    initialised model (the default 1.41e-5 is the reference's, for billions of pretrained parameters), and a KL
    coefficient on the scale of a reward in [0, 1] (0.2 x a few nats of KL would outweigh it)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(marker_dir))
    engine = make_engine(
        marker_dir,
        tokenizer,
        MarkerScorer(tokenizer),
        seed=seed,
        lr=2e-3,
        mixed_precision=mixed_precision,
        batch_size=8,
        mini_batch_size=4,
        gradient_accumulation_steps=1,
        response_length=8,
        init_kl_coef=0.01,
        steps=LEARNING_STEPS * 8,
    )
    batch = prompts(tokenizer, PromptFormat("chat", tokenizer.eos_token, tokenizer.chat_template))
    return [engine.step(batch)[0] for _ in range(LEARNING_STEPS)]


def assert_learned(history: list[dict]) -> None:
    """Mean score of the last 4 steps beats the first 4 by > 0.2 (observed over seeds 0-4, fp32 and bf16 autocast,
    1 and 2 threads: ~0.16-0.22 -> 0.50-0.79, gains 0.30-0.62), with a finite KL throughout."""
    scores = [s["objective/scores"] for s in history]
    first, last = sum(scores[:4]) / 4, sum(scores[-4:]) / 4
    assert all(math.isfinite(s["objective/kl"]) and math.isfinite(s["objective/kl_coef"]) for s in history)
    assert history[-1]["objective/kl"] > 0.1  # it moved away from the reference to get there
    assert history[-1]["lr"] < history[0]["lr"] / 10  # the default schedule decays
    assert last > first + 0.2, [round(s, 3) for s in scores]


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
@pytest.mark.parametrize("seed", range(5))
def test_ppo_learns_a_reward_it_can_chase(marker_dir, seed, mixed_precision):
    assert_learned(learning_run(marker_dir, seed, mixed_precision))


@pytest.mark.slow
@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
@pytest.mark.parametrize("seed", range(5))
def test_ppo_learns_on_two_threads(marker_dir, seed, mixed_precision):
    """The same runs on two threads (the fast suite runs them on one): the result does not hang on the thread
    count."""
    torch.set_num_threads(2)  # restored after the test (conftest)
    assert_learned(learning_run(marker_dir, seed, mixed_precision))


# ---------------------------------------------------------------------------------------------------- numerical faults


class _NaNScorer:
    """A broken reward model: NaN for every response."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, systems, questions, responses):
        return torch.full((len(responses),), float("nan"))


def _trainable(engine) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in engine.unwrapped.named_parameters() if p.requires_grad}


def test_a_nan_reward_stops_before_any_update(engine_factory, tokenizer, fmt, reward_model):
    engine = engine_factory(scorer=_NaNScorer(None), lr=3e-3)
    before = _trainable(engine)
    with pytest.raises(FloatingPointError, match="non-finite score"):
        engine.step(prompts(tokenizer, fmt))
    after = _trainable(engine)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_a_nan_loss_is_skipped_and_never_reaches_the_weights(engine_factory, tokenizer, fmt, monkeypatch):
    import rlhf.ppo.engine as ppo_engine

    engine = engine_factory(lr=3e-3)
    real = ppo_engine.clipped_policy_loss
    calls = {"n": 0}

    def nan_on_first(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), stats) if calls["n"] == 1 else (loss, stats)

    monkeypatch.setattr(ppo_engine, "clipped_policy_loss", nan_on_first)
    stats, _ = engine.step(prompts(tokenizer, fmt))
    assert stats["ppo/skipped_minibatches_nonfinite"] == 1.0
    assert all(torch.isfinite(p).all() for p in _trainable(engine).values())
    # The other minibatches still trained: the weights moved.
    assert calls["n"] > 1


def test_a_ratio_spike_minibatch_is_not_learned_from_and_is_counted(engine_factory, tokenizer, fmt):
    """--ratio_threshold below every minibatch's mean ratio (1 at the first): each minibatch's loss becomes 0 on the
    device, so no weight moves (value head included) and every minibatch is counted as skipped."""
    engine = engine_factory(lr=3e-3, ratio_threshold=0.5)
    before = _trainable(engine)
    stats, _ = engine.step(prompts(tokenizer, fmt))
    minibatches = 8 // 2 * 2  # batch / minibatch x epochs
    assert stats["ppo/skipped_minibatches_ratio"] == minibatches
    assert stats["ppo/skipped_minibatches_nonfinite"] == 0.0 and stats["loss/total"] == 0.0
    after = _trainable(engine)
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0])
def test_a_nan_gradient_never_reaches_the_weights_and_clipping_s_norm_is_the_check(
    engine_factory, tokenizer, fmt, monkeypatch, max_grad_norm
):
    """With clipping on, the global norm it took decides (no second pass over every gradient); with clipping off,
    all_finite does. Either way an optimizer step with a NaN gradient is skipped and counted."""
    import rlhf.ppo.engine as ppo_engine

    engine = engine_factory(lr=3e-3, max_grad_norm=max_grad_norm)
    passes = []
    real_all_finite = ppo_engine.all_finite
    monkeypatch.setattr(ppo_engine, "all_finite", lambda *a: passes.append(1) or real_all_finite(*a))
    real_backward = engine.accelerator.backward
    calls = {"n": 0}

    def nan_gradient_on_first(loss, **kwargs):
        real_backward(loss, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            next(p for p in engine.policy.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")

    monkeypatch.setattr(engine.accelerator, "backward", nan_gradient_on_first)
    stats, _ = engine.step(prompts(tokenizer, fmt))
    assert engine.nonfinite_updates_skipped == 1 and stats["ppo/nonfinite_updates_skipped"] == 1.0
    assert all(torch.isfinite(p).all() for p in _trainable(engine).values())
    optimizer_steps = 8 // (2 * 2) * 2  # batch / (minibatch x accumulation) x epochs
    assert len(passes) == (0 if max_grad_norm > 0 else optimizer_steps)


# ---------------------------------------------------------------------------------------------------- disk faults


def test_a_full_disk_during_a_checkpoint_leaves_the_previous_one_intact(
    engine_factory, tokenizer, fmt, tmp_path, monkeypatch
):
    import errno

    import rlhf.ppo.checkpoint as ppo_checkpoint
    from rlhf.data.prompts import PromptSampler
    from rlhf.outputs.folders import is_complete
    from rlhf.ppo.checkpoint import find_latest, save_checkpoint

    engine = engine_factory()
    sampler = PromptSampler(8, 8, 1, 0, 0)
    save_checkpoint(tmp_path / "step_2", engine.accelerator, engine, sampler, tokenizer, fmt, 2, merged=False)
    good = {p.name: p.read_bytes() for p in (tmp_path / "step_2").iterdir() if p.is_file()}

    real_save = ppo_checkpoint.torch.save

    def disk_full(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ppo_checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError) as caught:
        save_checkpoint(tmp_path / "step_4", engine.accelerator, engine, sampler, tokenizer, fmt, 4, merged=False)
    assert caught.value.errno == errno.ENOSPC
    assert not (tmp_path / "step_4").exists()
    assert not list(tmp_path.glob(".tmp-*"))  # the half-written folder is removed
    assert is_complete(tmp_path / "step_2") and find_latest(tmp_path) == tmp_path / "step_2"
    assert {p.name: p.read_bytes() for p in (tmp_path / "step_2").iterdir() if p.is_file()} == good


# ---------------------------------------------------------------------------------------------------- folded LoRA


def _lora_with_an_update(tiny_dir, **lora) -> torch.nn.Module:
    """A LoRA model whose B matrices are non-zero (as after some PPO steps), so the adapter changes the function."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    targets = ["q_proj", "v_proj", "up_proj"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM", **lora)
    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_dir)), config).eval()
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return lm


def test_folded_adapter_computes_the_same_function_and_restores_the_weights(tiny_dir, tokenizer, fmt):
    """Folding W + s*B@A gives the LoRA model's logits to fp32 rounding and its greedy tokens exactly; on exit every
    base weight is the very tensor it was, untouched (no merge/unmerge drift between steps)."""
    from rlhf.ppo.models import adapter_folded, foldable_lora_layers

    lm = _lora_with_an_update(tiny_dir)
    layers = foldable_lora_layers(lm)
    assert layers and len(layers) == 3 * lm.config.num_hidden_layers
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in lm.named_parameters()}
    batch = [p["prompt_ids"] for p in prompts(tokenizer, fmt, 4)]
    ids, mask = left_pad(batch, tokenizer.pad_token_id)
    with torch.no_grad():
        lora_logits = lm(input_ids=ids, attention_mask=mask).logits
        with adapter_disabled(lm):
            base_logits = lm(input_ids=ids, attention_mask=mask).logits
        with adapter_folded(lm, layers):
            folded_logits = lm(input_ids=ids, attention_mask=mask).logits
    assert (lora_logits - base_logits).abs().max() > 1e-2  # the adapter matters...
    torch.testing.assert_close(folded_logits, lora_logits, rtol=1e-5, atol=1e-5)  # ...and folding keeps it
    plain = sample(lm, tokenizer, batch, 12, 1.0, greedy=True)
    with adapter_folded(lm, layers):
        folded = sample(lm, tokenizer, batch, 12, 1.0, greedy=True)
    assert torch.equal(plain.input_ids, folded.input_ids)
    for name, p in lm.named_parameters():
        assert p.data_ptr() == before[name][0] and torch.equal(p.detach(), before[name][1]), name


def test_only_plain_float32_lora_is_folded(tiny_dir):
    from rlhf.ppo.models import foldable_lora_layers

    assert foldable_lora_layers(_lora_with_an_update(tiny_dir, use_dora=True)) is None  # not a plain s*B@A
    assert foldable_lora_layers(_lora_with_an_update(tiny_dir).to(torch.bfloat16)) is None  # bf16 rounds it away
    from transformers import AutoModelForCausalLM

    assert foldable_lora_layers(AutoModelForCausalLM.from_pretrained(str(tiny_dir))) is None  # no adapter


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_engine_samples_the_same_with_and_without_folding(engine_factory, tokenizer, fmt, mixed_precision):
    """Two PPO steps (the adapter has moved by the second) with and without --fold_lora_for_sampling: the same
    samples and log-probs. In fp32 the engine folds; under bf16 autocast it must not."""
    runs = {}
    for fold in (True, False):
        engine = engine_factory(lr=3e-3, fold_lora_for_sampling=fold, mixed_precision=mixed_precision)
        engine.step(prompts(tokenizer, fmt))
        assert (engine._foldable_lora(engine.unwrapped.lm) is not None) == (fold and mixed_precision == "no")
        runs[fold] = engine.rollout(prompts(tokenizer, fmt))
    assert torch.equal(runs[True].input_ids, runs[False].input_ids)
    torch.testing.assert_close(runs[True].logprobs, runs[False].logprobs, rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------------------------- frozen layers
# A LoRA on the top layers leaves the bottom ones frozen and adapter-free: the rollout computes them once and the
# policy, reference and update forwards start from their output (--share_frozen_layers, on by default).


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory, tokenizer) -> Path:
    return build_llama(tmp_path_factory.mktemp("four_layers"), tokenizer, layers=4, seed=3)


class LayerCalls(EnginePhases):
    """Counts the forwards of each real decoder layer of an engine's policy, by phase (generate, rollout,
    update): forward hooks on the layer modules themselves, so a layer that is skipped is not counted."""

    def __init__(self, engine: PPOEngine) -> None:
        from rlhf.models.shared_layers import decoder_layers

        super().__init__(engine)
        self.counts: dict[tuple[str, int], int] = {}
        layers = decoder_layers(engine.unwrapped.lm)
        self.handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(layers)]

    def _hook(self, index: int):
        def hook(module, args, output):
            key = (self.phase, index)
            self.counts[key] = self.counts.get(key, 0) + 1

        return hook

    def __call__(self, phase: str, index: int) -> int:
        return self.counts.get((phase, index), 0)

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_frozen_prefix_depth_counts_the_untouched_bottom_layers(four_layer_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhf.models.shared_layers import frozen_prefix_depth

    def depth(lora_layers, peft=True):
        lm = AutoModelForCausalLM.from_pretrained(str(four_layer_dir))
        if not peft:
            return frozen_prefix_depth(lm)
        args = PPOModelArguments(model_name_or_path=str(four_layer_dir), lora_layers=lora_layers)
        return frozen_prefix_depth(get_peft_model(lm, args.peft_config("CAUSAL_LM")))

    assert depth("2-3") == 2
    assert depth("1,3") == 1  # layer 2 is frozen but runs after the adapted layer 1
    assert depth("0-3") == 0 and depth(None) == 0 and depth("0") == 0
    assert depth(None, peft=False) == 0  # everything trains
    lm = AutoModelForCausalLM.from_pretrained(str(four_layer_dir)).requires_grad_(False)
    assert frozen_prefix_depth(lm) == 0  # nothing adapted: nothing to share
    lm.model.layers[3].requires_grad_(True)
    assert frozen_prefix_depth(lm) == 3
    lm.get_input_embeddings().requires_grad_(True)  # trained embeddings change every layer's input
    assert frozen_prefix_depth(lm) == 0


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_frozen_layers_run_once_per_rollout_and_the_step_is_the_same(
    four_layer_dir, tokenizer, fmt, reward_model, mixed_precision
):
    """LoRA on layers 2-3 of 4: with sharing, layers 0-1 run once per rollout chunk (plus the first step's check)
    and never in the reference or the update; the rollout and the update give what full forwards
    give: log-probs, values, reference log-probs, losses and the trained weights."""
    runs = {}
    for share in (True, False):
        scorer = RewardScorer(reward_model, tokenizer, fmt)
        engine = make_engine(
            four_layer_dir,
            tokenizer,
            scorer,
            lr=3e-3,
            lora_layers="2-3",
            mixed_precision=mixed_precision,
            share_frozen_layers=share,
            forward_batch_size=5,
        )
        assert engine.prefix_depth == (2 if share else 0)
        initial = _trainable(engine)
        calls = LayerCalls(engine)
        try:
            stats, rollout = engine.step(prompts(tokenizer, fmt))
        finally:
            calls.close()
        runs[share] = stats, rollout, _trainable(engine), calls
    (stats, ro, weights, calls), (stats_full, ro_full, weights_full, calls_full) = runs[True], runs[False]
    cfg = engine.config
    updates = cfg.ppo_epochs * cfg.batch_size // cfg.mini_batch_size
    chunks = 2  # 8 rows in chunks of 5 and 3; the first step's check adds a full and a replayed forward of one
    assert [calls("rollout", i) for i in range(4)] == [chunks + 1] * 2 + [2 * chunks + 2] * 2
    assert [calls("update", i) for i in range(4)] == [0, 0, updates, updates]
    assert [calls_full("rollout", i) for i in range(4)] == [2 * chunks] * 4
    assert [calls_full("update", i) for i in range(4)] == [updates] * 4
    assert ro.prefix is not None and ro.prefix.shape[:2] == ro.input_ids.shape and ro_full.prefix is None

    # The same samples (same seed, same weights); forwards that start from the stored states agree with full ones
    # to the rounding of the dtype under test (the update's minibatches see the prefix computed on other shapes).
    assert torch.equal(ro.input_ids, ro_full.input_ids)
    tol = TOL if mixed_precision == "no" else 3e-2
    for name in ("logprobs", "ref_logprobs", "values", "advantages"):
        torch.testing.assert_close(getattr(ro, name), getattr(ro_full, name), rtol=0, atol=tol, msg=name)
    for key in ("loss/policy_avg", "loss/value_avg", "policy/approxkl_avg", "objective/kl"):
        assert stats[key] == pytest.approx(stats_full[key], abs=tol), key
    assert stats["policy/first_minibatch_max_abs_logratio"] <= tol
    if mixed_precision == "no":  # under bf16, Adam's normalised steps turn rounding in near-zero gradients into
        # whole steps of either sign: the losses above are the comparison there
        moved = max(float((w - initial[name]).abs().max()) for name, w in weights.items())
        gap = max(float((w - weights_full[name]).abs().max()) for name, w in weights.items())
        assert gap <= 1e-4 < moved / 10  # the step trained (by ~1e-2) and both ways alike


def test_a_model_the_replay_does_not_fit_falls_back_to_full_forwards(
    four_layer_dir, tokenizer, fmt, reward_model, monkeypatch, caplog
):
    """The first step checks that starting from the stored states reproduces a full forward. A replay that does
    not (here: states deliberately shifted, standing in for an architecture whose layers it does not fit) turns
    sharing off with a warning, and that step's rollout is the full forwards' one."""
    import rlhf.ppo.engine as engine_module

    real = engine_module.prefix_replayed
    monkeypatch.setattr(engine_module, "prefix_replayed", lambda m, d, hidden, t: real(m, d, hidden + 1.0, t))
    scorer = RewardScorer(reward_model, tokenizer, fmt)
    engine = make_engine(four_layer_dir, tokenizer, scorer, lora_layers="2-3")
    with caplog.at_level("WARNING", logger="rlhf.ppo.engine"):
        rollout = engine.rollout(prompts(tokenizer, fmt))
    assert engine.prefix_depth == 0 and rollout.prefix is None
    assert "computing every forward in full" in caplog.text
    full = make_engine(four_layer_dir, tokenizer, scorer, lora_layers="2-3", share_frozen_layers=False)
    expected = full.rollout(prompts(tokenizer, fmt))
    torch.testing.assert_close(rollout.logprobs, expected.logprobs, rtol=0, atol=TOL)
    torch.testing.assert_close(rollout.ref_logprobs, expected.ref_logprobs, rtol=0, atol=TOL)
