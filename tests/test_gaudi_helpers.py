"""The Gaudi pieces that need neither the hardware nor optimum-habana (rlhf/gaudi.py), on the normal stack.

* packing and the answer-only collator the Gaudi SFT path feeds to GaudiSFTTrainer;
* the PPO engine's device hooks: lazy-mode ``mark_step`` after every backward and optimizer step, HPU graphs
  only around no-grad forwards (old log-probs/values, a frozen reference, the reward model), never around a
  forward that trains, nor around the adapter-off reference (a graph would replay the adapter); generation gets
  the runtime's extra ``generate`` arguments (optimum-habana's lazy-mode/HPU-graph generation on Gaudi);
* static shapes with a sampled response length: responses padded to --output_max_length, same numbers as dynamic.

``habana_frameworks`` does not exist here: the runtime takes ``mark_step`` and ``wrap_in_hpu_graph`` as arguments,
and these tests pass recorders with the same contract (``wrap(module)`` swaps ``module.forward`` in place).
"""

from __future__ import annotations

import pytest
import torch
from test_ppo_engine import TOL, make_engine, prompts
from transformers import AutoTokenizer

from rlhf.runtime.backend import Backend
from rlhf.runtime.device import DeviceRuntime
from rlhf.runtime.gaudi import AnswerOnlyCollator, GaudiRuntime, pack_features
from rlhf.runtime.stack import on_gaudi_stack


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_normal_stack_is_not_the_gaudi_stack():
    # This venv has TRL 1.x: the scripts use TRL's trainers and accelerate's Accelerator (rlhf.runtime.stack).
    assert on_gaudi_stack() is False


# ---------------------------------------------------------------------------------------------------- SFT data


def feature(prompt: list[int], answer: list[int]) -> dict[str, list[int]]:
    return {"input_ids": prompt + answer, "completion_mask": [0] * len(prompt) + [1] * len(answer)}


def test_pack_features_keeps_examples_whole_and_in_order():
    feats = [feature([1, 2, 3], [4, 5]), feature([6], [7, 8]), feature([9, 10], [11]), feature([12] * 4, [13] * 3)]
    rows = pack_features(feats, max_length=8)
    assert [r["input_ids"] for r in rows] == [
        [1, 2, 3, 4, 5, 6, 7, 8],
        [9, 10, 11],
        [12, 12, 12, 12, 13, 13, 13],
    ]
    assert rows[0]["position_ids"] == [0, 1, 2, 3, 4, 0, 1, 2]  # positions restart at each example
    assert rows[0]["completion_mask"] == [0, 0, 0, 1, 1, 0, 1, 1]
    assert all(len(r["input_ids"]) <= 8 for r in rows)


def test_answer_only_collator_masks_prompts_and_pads_to_a_static_width():
    feats = [feature([1, 2, 3], [4, 5]), feature([6], [7])]
    batch = AnswerOnlyCollator(pad_token_id=0, pad_to=8)(feats)
    assert batch["input_ids"].shape == (2, 8)  # static: the same width whatever the batch holds
    assert batch["labels"].tolist() == [[-100, -100, -100, 4, 5, -100, -100, -100], [-100, 7] + [-100] * 6]
    assert batch["attention_mask"].sum(1).tolist() == [5, 2]
    dynamic = AnswerOnlyCollator(pad_token_id=0)(feats)
    assert dynamic["input_ids"].shape == (2, 5)
    everything = AnswerOnlyCollator(pad_token_id=0, completion_only_loss=False)(feats)
    assert everything["labels"][0].tolist() == [1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------------- PPO hooks


class Recorder:
    """Stands in for htcore.mark_step and wrap_in_hpu_graph: counts steps; a 'graph' forward counts its calls and
    whether autograd was on (an HPU graph replays inference only)."""

    def __init__(self) -> None:
        self.mark_steps = 0
        self.graph_calls: dict[int, int] = {}  # id(module) -> calls through its graph
        self.graph_calls_with_grad = 0

    def mark_step(self) -> None:
        self.mark_steps += 1

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        original = module.forward
        key = id(module)

        def graph_forward(*args, **kwargs):
            self.graph_calls[key] = self.graph_calls.get(key, 0) + 1
            self.graph_calls_with_grad += torch.is_grad_enabled()
            return original(*args, **kwargs)

        module.forward = graph_forward
        return module


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(str(tiny_dir))


@pytest.fixture(scope="module")
def scorer(tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from rlhf.data.prompt_format import PromptFormat
    from rlhf.models.reward import RewardScorer

    torch.manual_seed(123)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    fmt = PromptFormat("chat", tokenizer.eos_token, tokenizer.chat_template)
    return RewardScorer(LlamaForSequenceClassification(config).eval(), tokenizer, fmt)


def batch_of(tokenizer, scorer, n: int = 4) -> list[dict]:
    return prompts(tokenizer, scorer.fmt, n)


@pytest.mark.parametrize("peft", [True, False], ids=["lora", "full"])
def test_lazy_mode_marks_steps_and_graphs_only_no_grad_forwards(tiny_dir, tokenizer, scorer, peft):
    rec = Recorder()
    runtime = GaudiRuntime(rec.mark_step, rec.wrap, generate_kwargs={"output_scores": False})
    engine = make_engine(
        tiny_dir, tokenizer, scorer, peft=peft, batch_size=4, mini_batch_size=1, gradient_accumulation_steps=2,
        ppo_epochs=1, response_length=6, static_shapes=True, max_prompt_length=48,
    )  # fmt: skip
    engine.runtime = runtime
    seen_generate_kwargs = []
    lm = engine.unwrapped.lm
    real_generate = lm.generate

    def generate(*args, **kwargs):
        seen_generate_kwargs.append({k: kwargs[k] for k in ("output_scores",) if k in kwargs})
        return real_generate(*args, **kwargs)

    lm.generate = generate
    engine.step(batch_of(tokenizer, scorer))
    assert seen_generate_kwargs == [{"output_scores": False}]  # the runtime's generate arguments reach generate()
    # 4 minibatches -> 4 backwards; 2 optimizer steps; 1 after generation.
    assert rec.mark_steps == 4 + 2 + 1
    assert rec.graph_calls_with_grad == 0  # no training forward ever ran through a graph
    assert rec.graph_calls[id(engine.unwrapped)] == engine.forward_calls["policy"]
    assert rec.graph_calls[id(scorer.model)] == engine.forward_calls["reward"]
    if peft:
        # Policy and reward model only: no graph for the adapter-off reference (a replayed graph ignores that switch)
        assert len(rec.graph_calls) == 2
    else:
        assert rec.graph_calls[id(engine.ref_model)] == engine.forward_calls["reference"]  # a frozen copy: graphed
    # The graph forwards are swapped back: the modules' own forward is in place after the step.
    assert "forward" not in engine.unwrapped.__dict__
    assert "forward" not in scorer.model.__dict__


def test_runtime_for_non_gaudi_backends_does_nothing():
    for backend in (Backend("cpu"), Backend("cuda")):
        runtime = GaudiRuntime.for_backend(backend)
        assert type(runtime) is DeviceRuntime
        runtime.mark_step()
        module = torch.nn.Linear(2, 2)
        with runtime.graphs(module):
            assert "forward" not in module.__dict__


def test_eager_mode_on_hpu_has_no_graphs():
    runtime = GaudiRuntime(None, None)  # --use_habana without --use_lazy_mode: eager, no graphs
    module = torch.nn.Linear(2, 2)
    with runtime.graphs(module):
        assert "forward" not in module.__dict__
    runtime.mark_step()
    assert runtime.mark_steps == 0


# ---------------------------------------------------------------------------------------------------- static shapes


def test_static_shapes_pad_sampled_responses_to_output_max_length(tiny_dir, tokenizer, scorer):
    """With the reference's sampled response length (no --response_length), static shapes pad every step to
    --output_max_length; the numbers are those of the dynamic run (same seed, same draws), within TOL."""
    results = {}
    for static in (False, True):
        engine = make_engine(
            tiny_dir, tokenizer, scorer, batch_size=4, mini_batch_size=2, gradient_accumulation_steps=1,
            output_max_length=40, max_prompt_length=48, static_shapes=static,
        )  # fmt: skip
        results[static] = engine.rollout(batch_of(tokenizer, scorer))
    dyn, sta = results[False], results[True]
    assert sta.input_ids.shape[1] == 48 + 40
    n = dyn.response_mask.shape[1]
    assert 32 <= n < 40  # the drawn length, from [32, output_max_length)
    mask = dyn.response_mask
    assert torch.equal(sta.response_mask[:, :n], mask) and not sta.response_mask[:, n:].any()
    for name in ("logprobs", "ref_logprobs", "values"):
        torch.testing.assert_close(getattr(sta, name)[:, :n][mask], getattr(dyn, name)[mask], rtol=0, atol=TOL)
    torch.testing.assert_close(sta.raw_scores, dyn.raw_scores, rtol=0, atol=TOL)
    torch.testing.assert_close(sta.rewards[:, :n][mask], dyn.rewards[mask], rtol=0, atol=TOL)
