"""Shared fixtures: tiny local models, the sample data, and a way to run the stage scripts as users do."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import build_llama, build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "orca_sample"

# Tests never touch the network: the hub is unreachable here and CI must not depend on it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module", autouse=True)
def accelerate_unconfigured_per_module():
    """Each test module starts with accelerate unconfigured and leaves it as it found it. Module-scoped fixtures that
    run a stage in-process configure accelerate's process-wide singletons (e.g. bf16 mixed precision) for the rest of
    their module; without this, a later module's in-process run in another precision would find them taken. Fresh
    dicts, not cleared ones: objects built earlier keep the dict they share."""
    try:
        from accelerate.state import AcceleratorState, GradientState, PartialState
    except ImportError:
        yield
        return
    classes = (AcceleratorState, PartialState, GradientState)
    saved = [cls._shared_state for cls in classes]
    for cls in classes:
        cls._shared_state = {}
    yield
    for cls, shared in zip(classes, saved, strict=True):
        cls._shared_state = shared


@pytest.fixture(autouse=True)
def restore_global_state():
    """Every test leaves the process as it found it, so no result depends on the order of the suite.

    In-process stages change globals that later tests would inherit: building TrainingArguments with bf16 sets
    ``ACCELERATE_MIXED_PRECISION=bf16`` in ``os.environ``, and accelerate keeps its first configuration in
    class-level singletons that every later ``Accelerator()`` reuses. Both are put back as they were before the
    test (objects of module-scoped fixtures keep theirs), with torch's global switches (default dtype, threads,
    deterministic algorithms, grad mode).
    """
    import torch

    environ = dict(os.environ)
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    grad = torch.is_grad_enabled()
    accelerate_state = _accelerate_state()
    saved = [dict(shared) for shared in accelerate_state]
    yield
    os.environ.clear()
    os.environ.update(environ)
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.set_grad_enabled(grad)
    for shared, before in zip(accelerate_state, saved, strict=True):
        shared.clear()  # in place: every accelerate state object shares this very dict
        shared.update(before)


def _accelerate_state() -> list[dict]:
    """accelerate's process-wide configuration (mixed precision, device, distributed type, accumulation)."""
    try:
        from accelerate.state import AcceleratorState, GradientState, PartialState
    except ImportError:
        return []
    return [AcceleratorState._shared_state, PartialState._shared_state, GradientState._shared_state]


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Records every model load: the heavy work that must not happen before a flag error (the fault suites)."""
    import transformers

    seen: list[str] = []
    for auto in ("AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        cls = getattr(transformers, auto)
        original = cls.from_pretrained.__func__

        def watched(klass, name, *args, _original=original, **kwargs):
            seen.append(str(name))
            return _original(klass, name, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(watched))
    return seen


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with a ChatML tokenizer (EOS = <|im_end|>, pad = <|pad|>)."""
    folder = tmp_path_factory.mktemp("tiny-chat")
    tok = build_tokenizer(folder)
    return build_llama(folder, tok)


@pytest.fixture(scope="session")
def tiny_plain_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama whose tokenizer has no chat template and no pad token (EOS = <|endoftext|>)."""
    folder = tmp_path_factory.mktemp("tiny-plain")
    return build_llama(folder, build_tokenizer(folder, chat=False, pad=False))


@pytest.fixture(scope="session")
def sample_data() -> Path:
    assert (SAMPLE / "train.jsonl").is_file(), "run python data/make_sample_data.py"
    return SAMPLE


def run_script(
    script: str, *args: str, env: dict | None = None, timeout: int = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run a top-level script (or any argv after the python executable) the way a user would."""
    full_env = {**os.environ, **(env or {})}
    argv = [sys.executable, str(ROOT / script), *args] if script.endswith(".py") else [sys.executable, script, *args]
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd or ROOT)


# Each case runs the script file as ``__main__`` in its own process, forked from one driver process that imported
# the heavy libraries once: the real exit code, stdout and stderr of the script, without paying ~10 s of imports per
# case on a small CI machine.
FORK_DRIVER = r"""
import atexit, importlib, json, os, runpy, sys, traceback
cases = json.loads(sys.argv[1])
for module in sorted({c["script"][:-3] for c in cases}):
    importlib.import_module(module)  # torch, transformers, trl, peft: once, before forking
codes = {}
for case in cases:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, case["stdout"]), (2, case["stderr"])):
            os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = [case["script"], *case["args"]]
        code = 0
        try:
            exec(case.get("prelude") or "", {"__name__": "prelude"})  # per-case set-up: limits, fault injection
            runpy.run_path(case["script"], run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        try:
            atexit._run_exitfuncs()  # what a normal exit runs (trackers such as wandb finish their run here)
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    codes[case["name"]] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(codes))
"""


def run_forked(
    cases: dict[str, tuple], folder: Path, env: dict | None = None
) -> dict[str, subprocess.CompletedProcess]:
    """Run ``{name: (script, args[, prelude])}`` as described above, in order; one CompletedProcess per case.

    ``prelude`` (optional) is Python run in the case's process just before the script: resource limits, fault
    injection. A case killed by a signal has the negative signal number as its return code.
    """
    spec = [
        {
            "name": name,
            "script": script,
            "args": args,
            "prelude": rest[0] if rest else None,
            "stdout": f"{folder}/{name}.out",
            "stderr": f"{folder}/{name}.err",
        }
        for name, (script, args, *rest) in cases.items()
    ]
    driver = run_script("-c", FORK_DRIVER, json.dumps(spec), env=env)
    assert driver.returncode == 0, driver.stderr[-3000:]
    codes = json.loads(driver.stdout.strip().splitlines()[-1])
    out = {}
    for c in spec:
        stdout, stderr = Path(c["stdout"]).read_text(), Path(c["stderr"]).read_text()
        out[c["name"]] = subprocess.CompletedProcess(c["args"], codes[c["name"]], stdout, stderr)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
