"""The pipeline's JSON config, checked before any stage runs: one-line errors naming the key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

STAGES = ("sft", "rm", "rm2", "ppo", "eval", "report")

# ---------------------------------------------------------------------------------------------------- the config

FLAG_KEYS = ("sft", "rm", "rm2", "ppo", "eval")  # each: a list of extra flags for that stage's script
PATH_KEYS = ("model", "dataset", "heldout", "output")
REQUIRED_KEYS = ("model", "dataset", "output")
CONFIG_KEYS = (*PATH_KEYS, *FLAG_KEYS)
RM_SEED = 42  # what the pipeline passes to rm when the config names no seed and rm2 needs a different one


class ConfigError(Exception):
    """A config problem: reported as ``error: --config FILE: <message>`` (exit 2) before any stage runs."""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int in Python, not in JSON
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def load_config(path: str, overrides: dict[str, str | None]) -> dict[str, Any]:
    """Read and check the config; ``overrides`` (``--model`` ...) replace the file's values before the checks."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        raise ConfigError(str(err)) from None
    if not isinstance(config, dict):
        raise ConfigError(f"expected a JSON object, got a {_json_type(config)}")
    config.update({key: value for key, value in overrides.items() if value is not None})
    unknown = [key for key in config if key not in CONFIG_KEYS]
    if unknown:
        raise ConfigError(f"unknown key {', '.join(map(repr, unknown))} (known keys: {', '.join(CONFIG_KEYS)})")
    for key in REQUIRED_KEYS:
        if key not in config:
            raise ConfigError(f"missing key '{key}'")
    for key in PATH_KEYS:
        value = config.get(key, "")
        if key in config and not (isinstance(value, str) and value.strip()):
            raise ConfigError(f"'{key}' must be a non-empty string, got {_json_type(value)} {json.dumps(value)}")
    for key in FLAG_KEYS:
        if key in config:
            _check_flag_list(key, config[key])
    return config


def _check_flag_list(key: str, flags: Any) -> None:
    """A stage's flags are a list of strings, one per command-line token, exactly as a shell would pass them."""
    if isinstance(flags, str):  # iterating it would pass one flag per character
        raise ConfigError(f"'{key}' must be a list of strings, one item per flag or value, got the string {flags!r}")
    if not isinstance(flags, list):
        raise ConfigError(f"'{key}' must be a list of strings, got {_json_type(flags)} {json.dumps(flags)}")
    for index, item in enumerate(flags):
        if not isinstance(item, str):
            kind, text = _json_type(item), json.dumps(item)
            # Refused, not converted: str() of a JSON number or boolean is not always what the script expects.
            hint = f' (write it as the string "{text}")' if kind in ("number", "boolean") else ""
            raise ConfigError(f"'{key}'[{index}] must be a string, got {kind} {text}{hint}")
        if item.startswith("--") and re.search(r"\s", item.split("=", 1)[0]):
            raise ConfigError(f"'{key}'[{index}] {item!r}: a flag and its value are two items of the list")


def last_value(flags: list[str], name: str) -> str | None:
    """The value the script will see for ``name`` (``--name V`` or ``--name=V``; the last one wins, as in argparse)."""
    value = None
    for index, token in enumerate(flags):
        if token == name and index + 1 < len(flags):
            value = flags[index + 1]
        elif token.startswith(name + "="):
            value = token.split("=", 1)[1]
    return value


def _seed(key: str, flags: list[str]) -> int | None:
    value = last_value(flags, "--seed")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"'{key}': --seed expects an integer, got {value!r}") from None


def _count(key: str, flags: list[str], name: str) -> int:
    """A positive integer flag's value (1 when absent)."""
    value = last_value(flags, name)
    if value is None:
        return 1
    if not (value.isdigit() and int(value) > 0):
        raise ConfigError(f"'{key}': {name} expects a positive integer, got {value!r}")
    return int(value)
