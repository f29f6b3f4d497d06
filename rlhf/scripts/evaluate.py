"""Evaluate RLHF: does the PPO policy beat the SFT policy on held-out prompts, and is the reward model any good?

    python evaluate.py --sft_model out/sft --ppo_model out/ppo/final --reward_model out/rm \\
        --second_reward_model out/rm2 --dataset_name data/orca_sample/heldout.jsonl --output_dir out/eval
    python evaluate.py --config eval.yaml                  (flags in a YAML file; command-line flags override it)

For each held-out prompt, one response (or --samples_per_prompt of them) is sampled from each policy, the way PPO
samples (rlhf/ppo/sampling.py), at the PPO run's temperature unless --temperature says otherwise. Reported in
``evaluation.json``: mean reward of each policy under the trained reward model and under a second reward model PPO
never saw (if given: reward hacking shows up as a gap between the two); the win rate of PPO over SFT under each, with
a 95% Wilson interval (ties count half; with several responses per prompt, every PPO response is compared with every
SFT response to the same prompt, and the interval is a normal one over the prompts' shares); KL(PPO || SFT) in nats
per response; mean response length; EOS rate; and the reward model's strict held-out accuracy, tie rate and margin
on the pairs (margins in ``margins.json``), also apart for the pairs whose answers differ in only one or two words
("content": the number, the fact) and the others ("form"). Where the data has ground truth (a ``gold`` column: the
accepted answers, ignored by the training stages), the gold accuracy of each policy: how often its response contains
the answer (``rlhf.evaluation.matches_gold``), and PPO's gain over SFT on the same prompts with a 95% interval; a
warning is logged and saved when a reward model's mean reward rises from SFT to PPO while gold accuracy falls; the
same per kind of question where a ``kind`` column names two or more (a fall on arithmetic can hide behind a rise on
facts).
``samples.jsonl`` holds every prompt with both responses and their scores (one line per response pair, numbered by
``sample``, with several per prompt); ``seconds`` in evaluation.json says where the time went. Every folder and flag
is checked, and the reward models loaded, before any generation. Works on any user's model folders.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf.cli import check_output_dir, check_seed, drop_debug_switch, parse_arguments, setup_logging
from rlhf.data.pairs import DataArguments, load_rows, validate_and_split
from rlhf.data.prompt_format import resolve_prompt_format
from rlhf.data.prompts import build_prompts
from rlhf.errors import UsageError, run_main
from rlhf.evaluation import (
    as_gold,
    as_kind,
    clustered_win_rate,
    gold_comparison,
    judge_agreement,
    matches_gold,
    minimal_pair,
    policy_summary,
    reward_hacking_warnings,
    sequence_kl,
    split_preference_metrics,
    win_rate,
)
from rlhf.models.arguments import LoadArguments
from rlhf.models.loading import check_causal_lm_folder, check_reward_folder, frozen, load_causal_lm, load_tokenizer
from rlhf.models.reward import load_scorer, score_with_each
from rlhf.models.shared_layers import SharedLayers
from rlhf.outputs.folders import published
from rlhf.ppo.checkpoint import load_ppo_config
from rlhf.ppo.models import causal_lm_logprobs
from rlhf.ppo.sampling import Samples, concat_samples, sample
from rlhf.runtime.backend import Backend
from rlhf.runtime.precision import PrecisionArguments, autocast
from rlhf.secrets import HubArguments, protect_secrets

logger = logging.getLogger("evaluate")


@dataclass
class EvalArguments:
    sft_model: str = field(default=None, metadata={"help": "The SFT policy folder (or hub name).", "required": True})
    ppo_model: str = field(
        default=None, metadata={"help": "The PPO policy (rl_training.py output_dir/final).", "required": True}
    )
    reward_model: str = field(
        default=None, metadata={"help": "The reward model PPO was trained against.", "required": True}
    )
    second_reward_model: str | None = field(
        default=None,
        metadata={"help": "A reward model PPO never saw (e.g. trained on other data), for an independent judgement."},
    )
    output_dir: str = field(default="out/eval", metadata={"help": "Where evaluation.json and samples go."})
    num_prompts: int = field(default=64, metadata={"help": "Held-out prompts to generate for."})
    num_pairs: int = field(default=200, metadata={"help": "Held-out pairs to measure reward-model accuracy on."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest response."})
    temperature: float | None = field(
        default=None,
        metadata={"help": "Sampling temperature for both policies (default: the PPO run's, else 1.0)."},
    )
    greedy: bool = field(default=False, metadata={"help": "Greedy decoding instead of sampling."})
    samples_per_prompt: int = field(
        default=1,
        metadata={
            "help": "Responses sampled per prompt from each policy. Above 1, the win rate compares every PPO "
            "response with every SFT response to the same prompt (the same rate as with one each, with less "
            "sampling luck; its 95%% interval is over prompts), and gold accuracy, KL, length and EOS rate are over "
            "all responses. Costs that many times the generation and scoring."
        },
    )
    batch_size: int = field(
        default=16,
        metadata={
            "help": "Sequences per reward-model or KL forward; responses per generation batch unless "
            "--generation_batch_size."
        },
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Responses per generation batch (default: --batch_size). Larger batches generate faster "
            "where the weights are read once per token for the whole batch (CPUs: the demo's 256 responses take "
            "~20%% less time in batches of 64 than of 16); they hold that many key-value caches."
        },
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed (the same for both policies)."})
    gold_column: str = field(
        default="gold",
        metadata={
            "help": "Column with the accepted answer(s) of a row (a string or a list of strings; empty: none), for "
            "gold accuracy. Absent: no gold accuracy."
        },
    )
    kind_column: str = field(
        default="kind",
        metadata={
            "help": "Column naming the kind of question a row asks (arithmetic, facts, ...). Where it names two or "
            "more kinds among the rows with gold answers, gold accuracy, its gain and the judges' mean rewards are "
            "also reported per kind, with a reward-hacking warning per kind. Absent: overall only."
        },
    )
    device: str | None = field(
        default=None, metadata={"help": "cpu, cuda or cuda:N (default: the first GPU when there is one, else cpu)."}
    )

    def __post_init__(self) -> None:
        for name in ("num_prompts", "num_pairs", "batch_size", "max_new_tokens", "samples_per_prompt"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name}: expected a positive integer, got {getattr(self, name)}")
        if self.generation_batch_size is not None and self.generation_batch_size < 1:
            raise UsageError(f"--generation_batch_size: expected a positive integer, got {self.generation_batch_size}")
        if self.temperature is not None and not self.temperature > 0:
            raise UsageError(f"--temperature: expected a value > 0, got {self.temperature}")
        check_seed(self.seed)
        check_output_dir(self.output_dir)


@dataclass
class EvalDataArguments(DataArguments):
    dataset_name: str = field(
        default="data/orca_sample/heldout.jsonl", metadata={"help": "Held-out pairs (file, folder or hub name)."}
    )
    validation_split_percentage: float = field(
        default=0, metadata={"help": "Must stay 0: every row of --dataset_name is held-out data."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Read at most this many rows (prompts come from the first --num_prompts)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Refused: see --max_train_samples."})


def pick_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name (cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"--device {name}: no such GPU here")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: expected cpu, cuda or cuda:N")
    return device


def generate_all(lm, tokenizer, prompts, args: EvalArguments, temperature: float, context) -> Samples:
    """One response per entry of ``prompts`` (a prompt repeated k times gets k), in batches of
    --generation_batch_size, with a progress bar."""
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)  # the same draws for both policies
    batch = args.generation_batch_size or args.batch_size
    starts = range(0, len(prompts), batch)
    parts = [
        sample(
            lm,
            tokenizer,
            [p["prompt_ids"] for p in prompts[i : i + batch]],
            args.max_new_tokens,
            temperature,
            greedy=args.greedy,
            context=context(),
        )
        for i in tqdm(starts, desc="generate", leave=False)
    ]
    return concat_samples(parts, tokenizer.pad_token_id)


def response_kl(policy, reference, s: Samples, temperature: float, batch_size: int) -> torch.Tensor:
    """KL(policy || reference) of each response in ``s`` (drawn from ``policy``), ``(B,)`` on the CPU.

    ``batch_size`` responses at a time (all at once would hold responses x length x vocabulary float32 logits per
    policy: gigabytes for the demo's 256, and slower than generating them), grouped by length and cut to the
    columns that hold a token of some row of the group (the samples are padded to the longest prompt and response
    of all): the forward passes cost what the tokens cost. The first layers the two policies hold in common (LoRA
    on the last layers of one SFT model) are computed once (``SharedLayers``)."""
    kl = torch.empty(s.input_ids.shape[0])
    shared = SharedLayers(reference, [policy])
    lengths = s.attention_mask.sum(1).cpu()
    for group in torch.argsort(lengths, stable=True).split(batch_size):
        rows = group.to(s.input_ids.device)
        mask, responses = s.attention_mask[rows], s.response_mask[rows]
        start = int(mask[:, : s.prompt_width].any(0).int().argmax())  # the group's longest prompt begins here
        width = int(responses.any(0).nonzero().max()) + 1 if bool(responses.any()) else 1  # its longest response
        cols = slice(start, s.prompt_width + width)
        inputs = (s.input_ids[rows, cols], mask[:, cols], s.position_ids[rows, cols], s.prompt_width - start)
        ref_logprobs, logprobs = shared(lambda lm, inputs=inputs: causal_lm_logprobs(lm, *inputs, temperature))
        kl[group] = sequence_kl(logprobs, ref_logprobs, responses[:, :width].to(logprobs.device)).float().cpu()
    return kl


def main(argv: list[str] | None = None) -> int:
    # ------------------------------------------------------------------ arguments, and every input checked
    types = (EvalArguments, EvalDataArguments, LoadArguments, HubArguments, PrecisionArguments)
    argv = drop_debug_switch(argv)  # --debug: full tracebacks (run_main)
    args, data_args, load_args, hub, precision = parse_arguments(types, argv, __doc__)
    if data_args.validation_split_percentage or data_args.max_eval_samples is not None:
        flag = "--max_eval_samples" if data_args.max_eval_samples is not None else "--validation_split_percentage"
        raise UsageError(
            f"{flag}: evaluate.py uses every row of --dataset_name as held-out data; give it the held-out file, and "
            "limit the rows with --num_prompts, --num_pairs or --max_train_samples"
        )
    setup_logging("info")
    protect_secrets(hub)
    device = pick_device(args.device)
    # Sampling, log-probs and reward scores all run in this one precision context (bf16 autocast or fp32).
    mixed_precision = precision.mixed_precision("evaluate", Backend(device.type))
    logger.info("device %s, precision: %s mixed precision", device, mixed_precision)

    def context():
        return autocast(mixed_precision, device.type)

    for name, flag in ((args.sft_model, "sft_model"), (args.ppo_model, "ppo_model")):
        check_causal_lm_folder(name, flag)
    for name, flag in ((args.reward_model, "reward_model"), (args.second_reward_model, "second_reward_model")):
        if name:
            check_reward_folder(name, flag)
    temperature = args.temperature or (load_ppo_config(args.ppo_model) or {}).get("temperature", 1.0)
    if args.greedy:  # the temperature still scales the log-probs of the KL estimate
        logger.info("greedy decoding (log-probs at temperature %s)", temperature)
    else:
        logger.info("sampling temperature %s", temperature)
    source = load_rows(data_args, hub.token)
    split = validate_and_split(source, data_args)
    split.report.log()
    columns = data_args.columns()
    gold_of = {  # (system, question) -> accepted answers; the training stages never read this column
        (row.get(columns["system"]) or "", row.get(columns["question"])): as_gold(row.get(args.gold_column))
        for row in source.rows
    }
    kind_of = {  # (system, question) -> its kind of question, a string ("" when none)
        (row.get(columns["system"]) or "", row.get(columns["question"])): as_kind(row.get(args.kind_column))
        for row in source.rows
    }
    tokenizer = load_tokenizer(args.sft_model, hub.token, trust_remote_code=load_args.trust_remote_code)
    fmt = resolve_prompt_format(data_args.prompt_template, tokenizer, args.sft_model)
    prompts = build_prompts(split.train, tokenizer, fmt, limit=args.num_prompts)
    each = args.samples_per_prompt
    drawn = [p for p in prompts for _ in range(each)]  # each prompt `each` times in a row
    golds = [gold_of.get((p["system"], p["question"]), []) for p in drawn]
    kinds = [kind_of.get((p["system"], p["question"]), "") for p in drawn]
    seconds: dict[str, float] = {}  # where the evaluation's time goes, saved with the results

    @contextmanager
    def timed(part: str):
        start = time.perf_counter()
        yield
        seconds[part] = seconds.get(part, 0.0) + time.perf_counter() - start

    judges = {"rm": ("reward_model", args.reward_model)}
    if args.second_reward_model:
        judges["rm2"] = ("second_reward_model", args.second_reward_model)
    loading = dict(token=hub.token, dtype=load_args.dtype, trust_remote_code=load_args.trust_remote_code)
    with timed("load"):
        scorers = {
            judge: load_scorer(folder, device=device, fallback_format=fmt, flag=flag, **loading)
            for judge, (flag, folder) in judges.items()
        }

    # ------------------------------------------------------------------ generate with both policies
    with timed("load"):
        lms = {
            name: frozen(load_causal_lm(folder, tokenizer, flag=f"{name}_model", **loading), device)
            for name, folder in (("sft", args.sft_model), ("ppo", args.ppo_model))
        }
    samples = {}
    for name, lm in lms.items():
        with timed(f"generate_{name}"):
            samples[name] = generate_all(lm, tokenizer, drawn, args, temperature, context)
    s = samples["ppo"]
    with timed("kl"), context(), torch.no_grad():
        kl = response_kl(lms["ppo"], lms["sft"], s, temperature, args.batch_size)

    # ------------------------------------------------------------------ score under each reward model
    systems, questions = [p["system"] for p in drawn], [p["question"] for p in drawn]
    result: dict = {"prompts": len(prompts), "samples_per_prompt": each, "temperature": temperature}
    result["greedy"] = args.greedy
    result["kl_ppo_sft"] = {"mean": kl.mean().item(), "max": kl.max().item()}
    margins: dict[str, list[float]] = {}
    scores: dict[str, dict[str, torch.Tensor]] = {}
    pairs = split.train[: args.num_pairs]
    n, m = len(drawn), len(pairs)
    content = [minimal_pair(p.chosen, p.rejected) for p in pairs]  # pairs that differ in a word or two, not in form
    sequences: dict[str, list[list[int]]] = {}
    for judge, scorer in scorers.items():
        # The policies' responses (their own token ids when the judge shares their tokenizer and prompt format, as
        # PPO scores them; else the text in the judge's format), then the held-out pairs in the judge's format, all
        # in one length-sorted pass.
        sequences[judge] = []
        for k in ("sft", "ppo"):
            if scorer.accepts_ids_of(tokenizer, fmt):
                sequences[judge] += samples[k].token_ids()
            else:
                sequences[judge] += [
                    scorer.token_ids(*row) for row in zip(systems, questions, samples[k].texts, strict=True)
                ]
        for answer in ("chosen", "rejected"):
            sequences[judge] += [
                scorer.token_ids(p.system, p.question, scorer.fmt.render_completion(getattr(p, answer))) for p in pairs
            ]
    # Judges given the same ids (the same tokenizer and format) score them in one pass, the first layers they hold
    # in common computed once.
    passes: list[list[str]] = []

    def pad_id(judge: str) -> int:
        return scorers[judge].tokenizer.pad_token_id

    for judge in scorers:
        for together in passes:
            if sequences[together[0]] == sequences[judge] and pad_id(together[0]) == pad_id(judge):
                together.append(judge)
                break
        else:
            passes.append([judge])
    judge_scores: dict[str, torch.Tensor] = {}
    for together in passes:
        models = [scorers[j].model for j in together]
        with timed("score_" + "+".join(together)), context():
            # The held-out pairs in batches of their own: batched with the responses, a pair's score (and so the
            # judge's held-out accuracy) would depend on which policies are evaluated.
            scored = score_with_each(
                models, sequences[together[0]], pad_id(together[0]), args.batch_size, apart_from=2 * n
            )
        judge_scores.update(zip(together, scored, strict=True))
    for judge in scorers:
        all_scores = judge_scores[judge]
        scores[judge] = {"sft": all_scores[:n], "ppo": all_scores[n : 2 * n]}
        chosen, rejected = all_scores[2 * n : 2 * n + m], all_scores[2 * n + m :]
        ppo, sft = scores[judge]["ppo"], scores[judge]["sft"]
        rate = win_rate(ppo, sft) if each == 1 else clustered_win_rate(ppo.view(-1, each), sft.view(-1, each))
        result[f"win_rate_{judge}"] = rate
        for name in ("sft", "ppo"):
            summary = policy_summary(samples[name], scores[judge][name])
            result.setdefault(name, {})[f"reward_mean_{judge}"] = summary.pop("reward_mean")
            result[name].update(summary)
        # The reward model's own held-out ranking quality, on pairs in its own prompt format.
        result[f"{judge}_heldout"] = split_preference_metrics(chosen, rejected, content)
        margins[judge] = (chosen - rejected).tolist()

    if len(scores) == 2:  # how far the held-out judge can confirm what PPO learned from the reward model
        result["judge_agreement"] = {"judges": list(scores), **judge_agreement(*scores.values(), each=each)}

    # ------------------------------------------------------------------ ground truth
    # Each response checked once against its row's gold (None: the row has none), for the accuracies and samples.
    matched = {
        k: [matches_gold(t, g) if g else None for t, g in zip(samples[k].texts, golds, strict=True)]
        for k in ("sft", "ppo")
    }
    g = gold_comparison(matched["sft"], matched["ppo"], each)
    if g is not None:
        result["gold"] = g
        rewards = {j: (result["sft"][f"reward_mean_{j}"], result["ppo"][f"reward_mean_{j}"]) for j in judges}
        result["warnings"] = reward_hacking_warnings(rewards, g["sft"], g["ppo"], g["rows"], g["gain"])
        # The same per kind of question (arithmetic, facts, ...) where the data names two or more: PPO can lose
        # ground on one kind while gaining more on another, and the judges' rewards on that kind tell whether they
        # paid for the loss.
        named = sorted({k for k, hits in zip(kinds, matched["sft"], strict=True) if k and hits is not None})
        if len(named) > 1:
            g["kinds"] = {}
            for kind in named:
                at = [i for i, k in enumerate(kinds) if k == kind]
                part = gold_comparison(*([matched[p][i] for i in at] for p in ("sft", "ppo")), each)
                part["rewards"] = {j: [scores[j][p][at].float().mean().item() for p in ("sft", "ppo")] for j in scores}
                g["kinds"][kind] = part
                result["warnings"] += reward_hacking_warnings(
                    {j: tuple(r) for j, r in part["rewards"].items()},
                    part["sft"],
                    part["ppo"],
                    part["rows"],
                    part["gain"],
                    kind=kind,
                )
        for warning in result["warnings"]:
            logger.warning(warning)
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    logger.info("time: %s", ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))

    # ------------------------------------------------------------------ write: complete or absent
    with published(Path(args.output_dir), {"stage": "evaluation"}) as out:
        (out / "margins.json").write_text(json.dumps(margins) + "\n", encoding="utf-8")
        with (out / "samples.jsonl").open("w", encoding="utf-8") as handle:
            for i, p in enumerate(drawn):
                row = {"question": p["question"], "sft": samples["sft"].texts[i], "ppo": samples["ppo"].texts[i]}
                if each > 1:
                    row["sample"] = i % each
                if kinds[i]:
                    row["kind"] = kinds[i]
                if golds[i]:
                    row["gold"] = golds[i]
                    row.update({f"{k}_gold": matched[k][i] for k in ("sft", "ppo")})
                row.update({f"{j}_{k}": scores[j][k][i].item() for j in scores for k in ("sft", "ppo")})
                handle.write(json.dumps(row) + "\n")
        (out / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    logger.info("evaluation: %s", json.dumps({k: v for k, v in result.items() if k != "prompts"}))
    logger.info("written to %s", Path(args.output_dir) / "evaluation.json")
    return 0


def cli() -> None:
    """The console command (pip install .)."""
    run_main(main)


if __name__ == "__main__":  # python -m rlhf.scripts.evaluate
    cli()
