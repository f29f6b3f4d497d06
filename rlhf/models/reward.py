"""Scoring with a reward model (token ids or text in its own prompt format) and its saved reward statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlhf.data.prompt_format import PromptFormat

STATS_FILE = "reward_stats.json"


@torch.no_grad()
def score_sequences(model: Any, sequences: list[list[int]], pad_token_id: int, batch_size: int = 16) -> torch.Tensor:
    """Reward of each token sequence, shape ``(n,)``, float32; equal sequences get equal scores.

    Sequences are right-padded with ``pad_token_id`` (distinct from EOS), so the head reads the last real token,
    the same convention as the reward-model training collator.
    """
    return score_with_each([model], sequences, pad_token_id, batch_size)[0]


@torch.no_grad()
def score_with_each(
    models: list[Any],
    sequences: list[list[int]],
    pad_token_id: int,
    batch_size: int = 16,
    apart_from: int | None = None,
) -> list[torch.Tensor]:
    """``score_sequences`` under each of ``models`` (one tokenizer), in the same batches; the first layers they hold
    in common (reward models trained with LoRA over one base) computed once (``SharedLayers``). With ``apart_from``,
    the sequences from that index on are batched (and deduplicated) apart from those before it, so their scores do
    not depend on what comes before (padding and batch shapes change low-precision rounding)."""
    from rlhf.models.shared_layers import SharedLayers

    device = next(models[0].parameters()).device
    was_training = [model.training for model in models]
    for model in models:
        model.eval()  # dropout off: a reward must not depend on a random mask
    shared = SharedLayers(models[0], models[1:])

    def score_part(part: list[list[int]]) -> list[torch.Tensor]:
        # Each distinct sequence is scored once, so identical responses get identical scores (an exact tie, whatever
        # batch they would have landed in); batches of similar lengths waste little on padding. Scores come back in
        # the input order.
        index: dict[tuple[int, ...], int] = {}
        slot = [index.setdefault(tuple(seq), len(index)) for seq in part]
        unique = [list(seq) for seq in index]
        order = sorted(range(len(unique)), key=lambda i: len(unique[i]))
        out = []
        for start in range(0, len(unique), batch_size):
            chunk = [unique[i] for i in order[start : start + batch_size]]
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            out.append(shared(lambda model, inputs=inputs: model(**inputs).logits[:, 0].float().cpu()))
        if not out:
            return [torch.zeros(0) for _ in models]
        slots, places = torch.tensor(slot), torch.tensor(order)
        results = []
        for column in zip(*out, strict=True):
            scores = torch.empty(len(unique))
            scores[places] = torch.cat(column)
            results.append(scores[slots])
        return results

    cut = len(sequences) if apart_from is None else apart_from
    parts = [score_part(sequences[:cut]), score_part(sequences[cut:])]
    for model, training in zip(models, was_training, strict=True):
        model.train(training)
    return [torch.cat(scores) for scores in zip(*parts, strict=True)]


class LengthGroupedCall:
    """Calls a sequence classifier as ``model(input_ids=..., attention_mask=...)`` does, in ``groups`` forwards of
    rows of similar length, each cut after the last real token of its longest row: the same logits, for less padding
    computed. The columns cut hold padding only, and a causal model's output at a position never depends on later
    columns, so each row's score is unchanged up to rounding (other batch shapes); gradients flow through every group.

    TRL's RewardTrainer pads a batch's chosen and rejected sequences to the longest of them; on the demo's pairs a
    quarter to a third of what it computes is padding. Its ``compute_loss`` is given this in place of the model
    (``length_grouped_reward_trainer``); each group is one call of the model it wraps.
    """

    def __init__(self, model: Any, groups: int) -> None:
        self.model = model
        self.groups = groups

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        rows, width = input_ids.shape
        columns = torch.arange(1, width + 1, device=attention_mask.device)
        ends = ((attention_mask != 0) * columns).amax(1).clamp(min=1)  # one past each row's last real token
        order = torch.argsort(ends, stable=True)
        logits = []
        for group in order.tensor_split(min(self.groups, rows)):
            cut = int(ends[group].max())
            sliced = {
                name: value[group, :cut] if torch.is_tensor(value) and value.shape[:2] == (rows, width) else value
                for name, value in kwargs.items()
            }
            out = self.model(input_ids=input_ids[group, :cut], attention_mask=attention_mask[group, :cut], **sliced)
            logits.append(out.logits)
        return SequenceClassifierOutputWithPast(logits=torch.cat(logits)[torch.argsort(order)])


class SharedPromptCall:
    """Calls a sequence classifier on a preference batch — TRL's layout: ``B`` chosen rows, then the ``B`` rejected
    rows of the same pairs, right-padded — with each pair's common first tokens (its prompt) computed once: the
    prompts in one forward (left-padded, keeping their key-value cache), then the ``2B`` answers in a second one
    that attends to its pair's cached prompt. The same scores up to rounding, and gradients flow through the cache
    into the prompt's forward. On the demo's pairs the prompts are two thirds of the tokens. With ``groups`` above 1,
    the pairs sorted by prompt length go in that many such pairs of forwards: less padding on both. Where dropout is
    on (TRL turns it off by default), a prompt gets one mask where separate forwards draw one per answer.

    Each answer keeps at least its last token, so a row's score is read in the answer forward; a model that
    returns no cache (gradient checkpointing turns it off) is refused where the flag is parsed.
    """

    def __init__(self, model: Any, pad_token_id: int, groups: int = 1) -> None:
        self.model, self.pad = model, pad_token_id  # the classifier reads each row's score before its first pad
        self.groups = groups

    def __call__(self, input_ids: Tensor, attention_mask: Tensor, **kwargs: Any) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutputWithPast

        rows, width = input_ids.shape
        pairs = rows // 2
        lengths = attention_mask.sum(1)
        right_padded = bool((attention_mask == (torch.arange(width, device=lengths.device) < lengths[:, None])).all())
        if rows % 2 or not right_padded:
            raise ValueError("SharedPromptCall: expected chosen rows then rejected rows, right-padded")
        kwargs.pop("use_cache", None)
        chosen, rejected = input_ids[:pairs], input_ids[pairs:]
        common = (chosen == rejected).int().cumprod(1).sum(1)
        shared = torch.minimum(common, torch.minimum(lengths[:pairs], lengths[pairs:]) - 1).clamp(min=0)
        logits, order = [], []
        for group in torch.argsort(shared, stable=True).tensor_split(min(self.groups, pairs)):
            # Each pair's rows side by side (chosen, rejected), to match its prompt's cache repeated twice.
            at = torch.stack([group, group + pairs], 1).flatten()
            logits.append(self._pairs(input_ids[at], lengths[at], shared[group], kwargs))
            order.append(at)
        return SequenceClassifierOutputWithPast(logits=torch.cat(logits)[torch.argsort(torch.cat(order))])

    def _pairs(self, ids: Tensor, lengths: Tensor, shared: Tensor, kwargs: dict[str, Any]) -> Tensor:
        """Scores of ``ids``: each pair's two rows in a row, its first ``shared`` tokens in common."""
        device, width = ids.device, ids.shape[1]
        width_p = int(shared.max())
        if width_p == 0:  # nothing in common: the rows as they are, cut after the longest
            mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
            return LengthGroupedCall(self.model, 1)(ids, mask, **kwargs).logits
        # The prompts, left-padded to the longest: column c of pair i holds its token c - (width_p - shared[i]).
        source = torch.arange(width_p, device=device)[None, :] - (width_p - shared[:, None])
        prompt_mask = source >= 0
        prompt = self.model(
            input_ids=ids[::2].gather(1, source.clamp(min=0)).masked_fill(~prompt_mask, self.pad),
            attention_mask=prompt_mask.long(),
            position_ids=source.clamp(min=0),
            use_cache=True,
            **kwargs,
        )
        cache = prompt.past_key_values
        cache.batch_repeat_interleave(2)
        # The answers, right-padded, at the positions that follow their prompt.
        start = shared.repeat_interleave(2)
        source = start[:, None] + torch.arange(int((lengths - start).max()), device=device)[None, :]
        answer_mask = source < lengths[:, None]
        return self.model(
            input_ids=ids.gather(1, source.clamp(max=width - 1)).masked_fill(~answer_mask, self.pad),
            attention_mask=torch.cat([prompt_mask.repeat_interleave(2, 0), answer_mask], 1).long(),
            position_ids=source,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        ).logits


def shared_prompt_reward_trainer(groups: int = 1, **kwargs: Any) -> Any:
    """TRL's RewardTrainer whose loss runs the model through ``SharedPromptCall`` (``groups`` groups of pairs);
    ``kwargs``: RewardTrainer's."""
    import trl

    class SharedPromptRewardTrainer(trl.RewardTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            call = SharedPromptCall(model, self.model.config.pad_token_id, groups)
            return super().compute_loss(call, inputs, return_outputs, num_items_in_batch)

    return SharedPromptRewardTrainer(**kwargs)


def length_grouped_reward_trainer(groups: int, **kwargs: Any) -> Any:
    """TRL's RewardTrainer whose loss runs the model through ``LengthGroupedCall`` (``groups`` forwards a batch);
    ``kwargs``: RewardTrainer's. Its loss, metrics and logging are TRL's own."""
    import trl

    class LengthGroupedRewardTrainer(trl.RewardTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            grouped = LengthGroupedCall(model, groups)
            return super().compute_loss(grouped, inputs, return_outputs, num_items_in_batch)

    return LengthGroupedRewardTrainer(**kwargs)


def reward_stats(scores: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation of rewards, used by PPO to normalise scores."""
    return {
        "mean": scores.float().mean().item(),
        "std": scores.float().std(unbiased=False).item(),
        "n": int(scores.numel()),
    }


def save_reward_stats(folder: str | Path, stats: dict[str, Any]) -> None:
    (Path(folder) / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")


def load_reward_stats(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / STATS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def same_tokenization(a: Any, b: Any) -> bool:
    """Whether two tokenizers turn text into the same ids: the same vocabulary, added tokens, normalizer and
    pre-tokenizer (fast tokenizers: their whole serialized pipeline, padding/truncation settings aside)."""
    if a is b:
        return True
    backend_a, backend_b = getattr(a, "backend_tokenizer", None), getattr(b, "backend_tokenizer", None)
    if backend_a is not None and backend_b is not None:

        def pipeline(backend: Any) -> dict[str, Any]:
            data = json.loads(backend.to_str())
            data.pop("padding", None)
            data.pop("truncation", None)
            return data

        return pipeline(backend_a) == pipeline(backend_b)
    return type(a) is type(b) and a.get_vocab() == b.get_vocab()


class RewardScorer:
    """Scores (prompt, response) with a reward model, in the prompt format that model was trained on.

    ``reads_policy_ids`` (see ``accepts_ids_of``) is True when the reward model shares the policy's tokenizer and
    prompt format: PPO then scores the policy's own token ids (``score_ids``). A decode -> re-encode round trip can
    change the ids (a sampled "Hel" + "lo" comes back as "Hello"), and with them the score (measured up to 0.187 on
    the demo's reward model).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, fmt: PromptFormat) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.reads_policy_ids = False

    def accepts_ids_of(self, policy_tokenizer: Any, policy_fmt: PromptFormat) -> bool:
        """Whether the policy's token ids can be scored as they are (same tokenizer and prompt format); remembered
        in ``reads_policy_ids``."""
        self.reads_policy_ids = policy_fmt == self.fmt and same_tokenization(self.tokenizer, policy_tokenizer)
        return self.reads_policy_ids

    def token_ids(self, system: str, question: str, response_text: str) -> list[int]:
        from rlhf.data.encoding import encode_completion, encode_text

        prompt = self.fmt.render_prompt(system, question, self.tokenizer)
        return encode_text(self.tokenizer, prompt, self.fmt) + encode_completion(self.tokenizer, response_text)

    @torch.no_grad()
    def __call__(self, systems: list[str], questions: list[str], responses: list[str]) -> Tensor:
        """Scores, shape ``(B,)`` float32, in one forward (the engine chunks by ``--forward_batch_size``).
        ``responses`` end with the EOS text when the policy stopped."""
        sequences = [self.token_ids(s, q, r) for s, q, r in zip(systems, questions, responses, strict=True)]
        return self.score_ids(sequences)

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]]) -> Tensor:
        """Scores of prompt + response token ids already in this model's vocabulary and format, ``(B,)``."""
        return score_sequences(self.model, sequences, self.tokenizer.pad_token_id, batch_size=len(sequences))


def score_head_in_fp32(model: nn.Module) -> nn.Module:
    """``model`` (a sequence classifier) with its score head computing in float32, from float32 hidden states and
    outside any autocast; the rest of the model keeps its precision.

    A bf16 score (bf16 weights, or float32 weights under bf16 autocast) has 8 bits of mantissa: two different
    responses whose scores differ by less than 1/128 of their size get the same score, which counts as a tie in win
    rates and held-out accuracy, and wastes the reward's resolution in PPO. The head is one ``hidden -> 1``
    projection, so computing it in float32 costs nothing. Heads that are not a plain ``nn.Linear`` named ``score``
    (quantized layers, other architectures) are left as they are.
    """
    head = getattr(model, "score", None)
    if type(head) is not nn.Linear:
        return model
    head.float()
    linear = head.forward

    def forward(hidden: Tensor) -> Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return linear(hidden.float())

    head.forward = forward  # an instance attribute: the module, its name and its state dict keys stay the same
    return model


def load_scorer(
    name: str,
    *,
    token: str | None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    quantization: Any | None = None,
    device: Any = None,
    fallback_format: PromptFormat | None = None,
    flag: str = "reward_model_name",
) -> RewardScorer:
    """A trained reward model, frozen, with its own tokenizer and the prompt format it was trained on (its
    ``prompt_format.json``; ``fallback_format`` for a model without one)."""
    from rlhf.data.prompt_format import resolve_prompt_format
    from rlhf.models.loading import frozen, load_reward_model, load_tokenizer

    tokenizer = load_tokenizer(name, token, trust_remote_code=trust_remote_code)
    model = load_reward_model(
        name,
        tokenizer,
        token=token,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        quantization=quantization,
        flag=flag,
    )
    fmt = PromptFormat.load(name) or fallback_format or resolve_prompt_format("auto", tokenizer, None)
    return RewardScorer(frozen(score_head_in_fp32(model), device), tokenizer, fmt)
