"""What every benchmark shares: the models it builds, child processes measured for time and peak RSS, the math."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out" / "bench"
PLOTS = ROOT / "bench" / "plots"
DATA = ROOT / "data" / "orca_sample" / "train.jsonl"
PYTHON = sys.executable

# SmolLM2-135M's transformer (hidden 576, 30 layers, 9 heads / 3 KV heads, MLP 1536, tied embeddings); the vocabulary
# is this benchmark's own tokenizer, so the model has ~106M parameters in its blocks plus a small embedding.
SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
}
TINY_LLAMA = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": False,
}
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# ---------------------------------------------------------------------------------------------- pure math (tested)


@dataclass(frozen=True)
class LinearFit:
    slope: float
    intercept: float
    r2: float


def linear_fit(xs: list[float], ys: list[float]) -> LinearFit:
    """Least-squares line through (x, y) and its coefficient of determination R^2 (1.0 for a perfect line)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("linear_fit needs at least two (x, y) points")
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("linear_fit needs at least two distinct x values")
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return LinearFit(slope, intercept, 1.0 - ss_res / ss_tot if ss_tot else 1.0)


def quadratic_share(xs: list[float], ys: list[float]) -> float:
    """How much of the largest point's time a fitted x^2 term explains (0 = linear; negative = concave).

    Fits y = a + b x + c x^2 by least squares and returns c * max(x)^2 / y(max(x)): a super-linear cost (e.g.
    generation re-reading a growing context) shows as a clearly positive share.
    """
    import numpy as np

    coeffs = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 2)
    top = max(xs)
    return float(coeffs[0] * top**2 / np.polyval(coeffs, top))


def training_flops_per_token(matmul_params: int, layers: int, hidden: int, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token of a decoder: 6 N for the weight matmuls (N = parameters used
    in matmuls, LM head included, embedding lookup excluded) plus 12 L d s for the attention scores and values
    (Kaplan et al. 2020, causal masking not discounted, as in the PaLM MFU count)."""
    return 6.0 * matmul_params + 12.0 * layers * hidden * seq_len


def lora_training_flops_per_token(matmul_params: int, layers: int, hidden: int, seq_len: int) -> float:
    """With frozen base weights, backward still needs the activation gradients (2 N) but not the weight gradients
    (2 N): 4 N + attention (whose backward is needed in full). Adapter FLOPs are negligible at rank 16."""
    return 4.0 * matmul_params + 12.0 * layers * hidden * seq_len


PPO_PHASES = ("generate", "policy_forward", "reference", "score", "update")


def ppo_phases(rows: list[dict]) -> dict[str, float]:
    """Median seconds per PPO phase over the steady steps of a metrics.jsonl (the first, warm-up step is left out
    when there are others), the median total, and what the phases leave of it ("other")."""
    steady = rows[1:] or rows
    out = {p: statistics.median(r.get(f"time/ppo/{p}", 0.0) for r in steady) for p in PPO_PHASES}
    out["total"] = statistics.median(r["time/ppo/total"] for r in steady)
    out["other"] = max(0.0, out["total"] - sum(out[p] for p in PPO_PHASES))
    return out


def ratio_summary(values: list[float]) -> dict[str, float]:
    """Median with min and max, for ratios measured over alternated runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ---------------------------------------------------------------------------------------------- machine


def machine() -> dict[str, str]:
    import torch

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        flags = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    except (OSError, StopIteration):
        isa = []
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "isa": ", ".join(isa) or "unknown",
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def measured_stamp() -> dict[str, str]:
    """When and on which CPU a benchmark measured, saved with its json so a section kept later still says so."""
    import datetime as dt

    info = machine()
    return {
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": info["cpu"],
        "isa": info["isa"],
    }


# ---------------------------------------------------------------------------------------------- child processes


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_rss_mb: float  # the kernel's peak resident set (ru_maxrss): what `time -v` and a cluster's OOM killer see
    output: str
    peak_anon_mb: float = float("nan")  # the highest anonymous RSS sampled (bench/launcher.py): page cache left out


def run_measured(argv: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> Measured:
    """Run a command to completion; its wall time and its own peak resident memory (wait4's rusage, taken by
    bench/launcher.py so that this process's own peak does not count: see there), and its sampled peak of anonymous
    memory (nan where /proc has none)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak_kib"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-S", str(ROOT / "bench" / "launcher.py"), str(peak_file), *argv],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wall = time.perf_counter() - start
        peaks = peak_file.read_text(encoding="utf-8").split() if peak_file.exists() else []
    peak_kib, anon_kib = (float(peaks[0]), float(peaks[1])) if len(peaks) >= 2 else (float("nan"), float("nan"))
    output = proc.stdout.decode("utf-8", "replace")
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output, encoding="utf-8")
    return Measured(proc.returncode, wall, peak_kib / 1024.0, output, (anon_kib or float("nan")) / 1024.0)


def check(result: Measured, what: str) -> Measured:
    if result.returncode != 0:
        tail = "\n".join(result.output.splitlines()[-30:])
        raise SystemExit(f"error: {what} failed (exit {result.returncode}):\n{tail}")
    return result


# ---------------------------------------------------------------------------------------------- models and data


def build_tokenizer(folder: Path, vocab_size: int = 4096):
    """A byte-level BPE tokenizer trained on the sample data, with ChatML, EOS <|im_end|> and a distinct pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [r[k] for r in rows for k in ("system", "question", "chosen", "rejected") if r.get(k)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>", bos_token=None, unk_token=None
    )
    fast.chat_template = CHATML
    fast.save_pretrained(str(folder))
    return fast


def build_model(folder: Path, dims: dict, kind: str = "causal", seed: int = 0, tokenizer_from: Path | None = None):
    """A randomly initialised Llama with ``dims`` saved to ``folder`` (``kind``: causal or reward), once."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    if (folder / "config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_from)) if tokenizer_from else build_tokenizer(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        num_labels=1,
        **dims,
    )
    model = LlamaForCausalLM(config) if kind == "causal" else LlamaForSequenceClassification(config)
    if kind == "causal":
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def tiny_ppo_models(root: Path) -> tuple[Path, Path]:
    """The tiny policy (causal LM) and reward model (sequence classifier) both PPO stacks read."""
    policy = build_model(root / "tiny-policy", TINY_LLAMA, "causal", seed=0)
    reward = build_model(root / "tiny-reward", TINY_LLAMA, "reward", seed=1, tokenizer_from=policy)
    return policy, reward


def precision_env(precision: str) -> dict[str, str]:
    """accelerate's switch, which rl_training.py honours: bf16 autocast around every forward, fp32 weights."""
    return {"ACCELERATE_MIXED_PRECISION": "bf16" if precision == "bf16" else "no"}


def smollm2_ppo_models(root: Path) -> tuple[Path, Path]:
    """Policy and reward model at SmolLM2-135M's dimensions (random weights, this benchmark's tokenizer)."""
    policy = build_model(root / "smollm2-policy", SMOLLM2_135M, "causal", seed=0)
    reward = build_model(root / "smollm2-reward", SMOLLM2_135M, "reward", seed=1, tokenizer_from=policy)
    return policy, reward


def block_markers(name: str) -> tuple[str, str]:
    """The HTML comments around a BENCHMARKS.md section that one benchmark writes and the others keep."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def marked(name: str, body: str) -> str:
    start, end = block_markers(name)
    return f"{start}\n{body.strip()}\n{end}"


def extract_block(text: str, name: str) -> str | None:
    """The section ``name`` of ``text``, markers included, or None."""
    start, end = block_markers(name)
    if start not in text or end not in text.split(start, 1)[1]:
        return None
    return start + text.split(start, 1)[1].split(end, 1)[0] + end


def replace_block(text: str, name: str, new: str) -> str:
    """``text`` with its section ``name`` replaced by ``new`` (appended when it has none)."""
    start, end = block_markers(name)
    if extract_block(text, name) is None:
        return text.rstrip() + "\n\n" + new + "\n"
    head, rest = text.split(start, 1)
    return head + new + rest.split(end, 1)[1]


def save_json(name: str, payload: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return path


def load_json(name: str) -> dict | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
