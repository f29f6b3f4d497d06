"""TRL 1.12's PPOTrainer on the benchmark's tiny models. Runs inside .venv-trl112 (never imports this project).

    .venv-trl112/bin/python bench/trl_ppo_run.py --policy P --reward R --prompts prompts.jsonl --out O \
        --batch_size 16 --mini_batch_size 4 --ppo_epochs 4 --response_length 32 --steps 4 --peft none

Configuration mapped onto ours (read from trl/experimental/ppo/ppo_trainer.py 1.12.0):
- rollout batch = per_device_train_batch_size x gradient_accumulation_steps: per_device = batch, accumulation 1;
- num_mini_batches = batch / mini_batch_size: one optimizer step per minibatch, as ours;
- stop_token None: generation runs to response_length and nothing is truncated (our --ignore_eos);
- local_rollout_forward_batch_size = batch: one no-grad forward over the whole rollout, as ours by default;
- no sample generations, no checkpoints, no report_to: only the training loop is timed.
Writes ``timings.json``: the wall time at the end of every PPO update (TrainerCallback.on_step_end).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("policy", "reward", "prompts", "out", "peft"):
        parser.add_argument(f"--{name}", required=True)
    for name in ("batch_size", "mini_batch_size", "ppo_epochs", "response_length", "steps", "seed"):
        parser.add_argument(f"--{name}", type=int, default=0)
    parser.add_argument("--learning_rate", type=float, default=1.41e-5)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: mixed precision")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(args.policy, padding_side="left")
    rows = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{"input_ids": r["prompt_ids"]} for r in rows])
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(args.reward, num_labels=1, dtype=torch.float32)
    ref = None
    peft_config = None
    if args.peft == "lora":
        from peft import LoraConfig

        # The same adapter as ours (rl_training.py defaults: r 16, alpha 32, dropout 0.05, all linear layers).
        peft_config = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    else:
        ref = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)

    config = PPOConfig(
        output_dir=args.out,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=args.batch_size // args.mini_batch_size,
        local_rollout_forward_batch_size=args.batch_size,
        num_ppo_epochs=args.ppo_epochs,
        response_length=args.response_length,
        stop_token=None,
        temperature=1.0,
        total_episodes=args.steps * args.batch_size,
        learning_rate=args.learning_rate,
        num_sample_generations=0,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        use_cpu=True,
        bf16=args.precision == "bf16",  # autocast over the fp32 weights, as ours under ACCELERATE_MIXED_PRECISION
        disable_tqdm=True,
        seed=args.seed,
        dataloader_num_workers=0,
    )
    clock = StepClock()
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=dataset,
        eval_dataset=dataset.select(range(4)),
        peft_config=peft_config,
        callbacks=[clock],
    )
    start = time.perf_counter()
    trainer.train()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "timings.json").write_text(json.dumps({"start": start, "step_ends": clock.ends}))


if __name__ == "__main__":
    main()
