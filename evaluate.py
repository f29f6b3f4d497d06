"""Evaluate RLHF: does the PPO policy beat the SFT policy on held-out prompts, and is the reward model any good?

    python evaluate.py --sft_model out/sft --ppo_model out/ppo/final --reward_model out/rm \
        --second_reward_model out/rm2 --dataset_name data/orca_sample/heldout.jsonl --output_dir out/eval

For each held-out prompt, one response is sampled from each policy (same temperature as PPO training). Reported in
``evaluation.json``: mean reward of each policy under the trained reward model and under a second reward model
PPO never saw (if given: reward hacking shows up as a gap between the two); the win rate of PPO over SFT under each,
with a 95% Wilson interval (ties count half); KL(PPO || SFT) in nats per response; mean response length; EOS rate;
and the reward model's strict held-out accuracy, tie rate and margin on the pairs (margins in ``margins.json``).
Where the data has ground truth (a ``gold`` column: the accepted answers, ignored by the training stages), the gold
accuracy of each policy: how often its response contains the answer (``rlhf.evaluation.matches_gold``); a warning
is logged and saved when a reward model's mean reward rises from SFT to PPO while gold accuracy falls.
``samples.jsonl`` holds every prompt with both responses and their scores. Works on any user's model folders.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from rlhf.cli import parse_dataclasses, setup_logging
from rlhf.data.encoding import encode_text
from rlhf.data.pairs import DataArguments, load_rows, validate_and_split
from rlhf.data.prompt_format import PromptFormat, resolve_prompt_format
from rlhf.errors import UsageError, run_main
from rlhf.evaluation import (
    as_gold,
    gold_accuracy,
    matches_gold,
    merge_samples,
    policy_summary,
    preference_metrics,
    response_logprobs_under,
    reward_hacking_warnings,
    sample,
    sequence_kl,
    win_rate,
)
from rlhf.models.loading import check_causal_lm_folder, check_reward_folder, load_tokenizer
from rlhf.models.reward import RewardScorer, same_tokenization, score_sequences
from rlhf.runtime.backend import Backend
from rlhf.runtime.precision import PrecisionArguments, autocast
from rlhf.secrets import HubArguments, protect_secrets

logger = logging.getLogger("evaluate")


@dataclass
class EvalArguments:
    sft_model: str = field(metadata={"help": "The SFT policy folder (or hub name)."})
    ppo_model: str = field(metadata={"help": "The PPO policy (rl_training.py output_dir/final)."})
    reward_model: str = field(metadata={"help": "The reward model PPO was trained against."})
    second_reward_model: str | None = field(
        default=None,
        metadata={"help": "A reward model PPO never saw (e.g. trained on other data), for an independent judgement."},
    )
    output_dir: str = field(default="out/eval", metadata={"help": "Where evaluation.json and samples go."})
    num_prompts: int = field(default=64, metadata={"help": "Held-out prompts to generate for."})
    num_pairs: int = field(default=200, metadata={"help": "Held-out pairs to measure reward-model accuracy on."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest response."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for both policies."})
    greedy: bool = field(default=False, metadata={"help": "Greedy decoding instead of sampling."})
    batch_size: int = field(
        default=16, metadata={"help": "Prompts per generation batch; sequences per reward-model forward."}
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed (the same for both policies)."})
    gold_column: str = field(
        default="gold",
        metadata={
            "help": "Column with the accepted answer(s) of a row (a string or a list of strings; empty: none), for "
            "gold accuracy. Absent: no gold accuracy."
        },
    )


@dataclass
class EvalDataArguments(DataArguments):
    dataset_name: str = field(
        default="data/orca_sample/heldout.jsonl", metadata={"help": "Held-out pairs (file, folder or hub name)."}
    )
    validation_split_percentage: float = field(
        default=0, metadata={"help": "Kept at 0: the whole file is used as held-out data."}
    )


def _load_lm(name: str, token: str | None):
    from transformers import AutoModelForCausalLM

    check_causal_lm_folder(name, "model")
    return AutoModelForCausalLM.from_pretrained(name, token=token).eval()


def _load_scorer(name: str, token: str | None) -> RewardScorer:
    from transformers import AutoModelForSequenceClassification

    check_reward_folder(name, "reward_model")
    tokenizer, _ = load_tokenizer(name, token)
    model = AutoModelForSequenceClassification.from_pretrained(name, num_labels=1, token=token)
    model.config.pad_token_id = tokenizer.pad_token_id
    fmt = PromptFormat.load(name) or resolve_prompt_format("auto", tokenizer, None)
    return RewardScorer(model.eval(), tokenizer, fmt)


def _generate_all(lm, tokenizer, prompts, args: EvalArguments, mixed_precision: str) -> list[dict]:
    torch.manual_seed(args.seed)
    with autocast(mixed_precision, lm.device.type):
        return [
            sample(
                lm,
                tokenizer,
                [p["prompt_ids"] for p in prompts[i : i + args.batch_size]],
                args.max_new_tokens,
                args.temperature,
                args.greedy,
            )
            for i in range(0, len(prompts), args.batch_size)
        ]


def _sampled_ids(batches: list[dict]) -> list[list[int]]:
    """Prompt + response token ids of every sampled row, without padding (what the policy actually produced)."""
    out = []
    for b in batches:
        width = b["prompt_width"]
        for ids, mask, response_mask in zip(
            b["input_ids"], b["attention_mask"], b["response_mask"].bool(), strict=True
        ):
            out.append(ids[:width][mask[:width].bool()].tolist() + ids[width:][response_mask].tolist())
    return out


def main(argv: list[str] | None = None) -> int:
    # ------------------------------------------------------------------ arguments
    parser = HfArgumentParser((EvalArguments, EvalDataArguments, HubArguments, PrecisionArguments))
    args, data_args, hub, precision = parse_dataclasses(parser, argv)
    setup_logging("info")
    protect_secrets(hub)
    # Sampling, log-probs and reward scores all run in this one precision context (bf16 autocast or fp32).
    mixed_precision = precision.mixed_precision("evaluate", Backend("cuda" if torch.cuda.is_available() else "cpu"))
    logger.info("precision: %s mixed precision", mixed_precision)
    if min(args.num_prompts, args.num_pairs, args.batch_size, args.max_new_tokens) < 1:
        raise UsageError("--num_prompts, --num_pairs, --batch_size and --max_new_tokens must be positive")

    # ------------------------------------------------------------------ data
    source = load_rows(data_args, hub.token)
    split = validate_and_split(source, data_args)
    split.report.log()
    columns = data_args.columns()
    gold_of = {  # (system, question) -> accepted answers; the training stages never read this column
        (row.get(columns["system"]) or "", row.get(columns["question"])): as_gold(row.get(args.gold_column))
        for row in source.rows
    }
    tokenizer, _ = load_tokenizer(args.sft_model, hub.token)
    fmt = resolve_prompt_format(data_args.prompt_template, tokenizer, args.sft_model)
    prompts, seen = [], set()
    for pair in split.train:
        if (pair.system, pair.question) not in seen and len(prompts) < args.num_prompts:
            seen.add((pair.system, pair.question))
            ids = encode_text(tokenizer, fmt.render_prompt(pair.system, pair.question, tokenizer), fmt)
            gold = gold_of.get((pair.system, pair.question), [])
            prompts.append({"system": pair.system, "question": pair.question, "prompt_ids": ids, "gold": gold})

    seconds: dict[str, float] = {}  # where the evaluation's time goes, saved with the results

    @contextmanager
    def timed(part: str):
        start = time.perf_counter()
        yield
        seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - start

    # ------------------------------------------------------------------ generate with both policies
    with timed("load"):
        sft_lm, ppo_lm = _load_lm(args.sft_model, hub.token), _load_lm(args.ppo_model, hub.token)
    batches = {}
    for name, lm in (("sft", sft_lm), ("ppo", ppo_lm)):
        with timed(f"generate_{name}"):
            batches[name] = _generate_all(lm, tokenizer, prompts, args, mixed_precision)
    texts = {k: [t for b in v for t in b["texts"]] for k, v in batches.items()}
    with timed("kl"), autocast(mixed_precision, ppo_lm.device.type):
        kl = torch.cat(
            [
                sequence_kl(
                    response_logprobs_under(ppo_lm, b, args.temperature),
                    response_logprobs_under(sft_lm, b, args.temperature),
                    b["response_mask"],
                )
                for b in batches["ppo"]
            ]
        )

    # ------------------------------------------------------------------ score under each reward model
    judges = {"rm": args.reward_model}
    if args.second_reward_model:
        judges["rm2"] = args.second_reward_model
    systems, questions = [p["system"] for p in prompts], [p["question"] for p in prompts]
    result: dict = {"prompts": len(prompts), "kl_ppo_sft": {"mean": kl.mean().item(), "max": kl.max().item()}}
    margins: dict[str, list[float]] = {}
    scores: dict[str, dict[str, torch.Tensor]] = {}
    sampled = {k: _sampled_ids(v) for k, v in batches.items()}
    pairs = split.train[: args.num_pairs]
    n, m = len(prompts), len(pairs)
    for judge, folder in judges.items():
        with timed("load"):
            scorer = _load_scorer(folder, hub.token)
        # The policies' responses (their own token ids when the judge shares their tokenizer and prompt format, as
        # PPO scores them; else the text in the judge's format), then the held-out pairs, in one length-sorted pass.
        own_ids = scorer.fmt == fmt and same_tokenization(scorer.tokenizer, tokenizer)
        sequences = []
        for k in ("sft", "ppo"):
            if own_ids:
                sequences += sampled[k]
            else:
                sequences += [scorer.token_ids(s, q, t) for s, q, t in zip(systems, questions, texts[k], strict=True)]
        for answer in ("chosen", "rejected"):
            sequences += [
                scorer.token_ids(p.system, p.question, scorer.fmt.render_completion(getattr(p, answer))) for p in pairs
            ]
        with timed(f"score_{judge}"), autocast(mixed_precision, scorer.model.device.type):
            all_scores = score_sequences(scorer.model, sequences, scorer.tokenizer.pad_token_id, args.batch_size)
        scores[judge] = {"sft": all_scores[:n], "ppo": all_scores[n : 2 * n]}
        rc, rr = all_scores[2 * n : 2 * n + m], all_scores[2 * n + m :]
        result[f"win_rate_{judge}"] = win_rate(scores[judge]["ppo"], scores[judge]["sft"])
        for name in ("sft", "ppo"):
            result.setdefault(name, {})
            summary = policy_summary(merge_samples(batches[name]), scores[judge][name])
            result[name][f"reward_mean_{judge}"] = summary.pop("reward_mean")
            result[name].update(summary)
        # The reward model's own held-out ranking quality, on pairs in its own prompt format.
        result[f"{judge}_heldout"] = preference_metrics(rc, rr)
        margins[judge] = (rc - rr).tolist()

    # ------------------------------------------------------------------ ground truth
    golds = [p["gold"] for p in prompts]
    gold = {name: gold_accuracy(texts[name], golds) for name in ("sft", "ppo")}
    if gold["sft"] is not None:
        result["gold"] = {"rows": gold["sft"]["rows"], "sft": gold["sft"]["accuracy"], "ppo": gold["ppo"]["accuracy"]}
        rewards = {j: (result["sft"][f"reward_mean_{j}"], result["ppo"][f"reward_mean_{j}"]) for j in judges}
        result["warnings"] = reward_hacking_warnings(
            rewards, result["gold"]["sft"], result["gold"]["ppo"], result["gold"]["rows"]
        )
        for warning in result["warnings"]:
            logger.warning(warning)

    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    logger.info("time: %s", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))

    # ------------------------------------------------------------------ write
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "margins.json").write_text(json.dumps(margins) + "\n", encoding="utf-8")
    with (out / "samples.jsonl").open("w", encoding="utf-8") as handle:
        for i, p in enumerate(prompts):
            row = {"question": p["question"], "sft": texts["sft"][i], "ppo": texts["ppo"][i]}
            if p["gold"]:
                row.update(gold=p["gold"], sft_gold=matches_gold(texts["sft"][i], p["gold"]))
                row["ppo_gold"] = matches_gold(texts["ppo"][i], p["gold"])
            row.update({f"{j}_{k}": scores[j][k][i].item() for j in scores for k in ("sft", "ppo")})
            handle.write(json.dumps(row) + "\n")
    # Written last: its presence means the evaluation finished (the pipeline skips a finished stage).
    (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    logger.info("evaluation: %s", json.dumps({k: v for k, v in result.items() if k != "prompts"}))
    logger.info("written to %s", out / "evaluation.json")
    return 0


if __name__ == "__main__":
    run_main(main)
