"""Keeping the hub token out of everything that gets written: saved arguments, trackers, logs."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("rlhf.secrets")


@dataclass
class HubArguments:
    """How to reach the Hugging Face hub. The token is used for hub calls only and is never written anywhere."""

    hf_access_token: str | None = field(
        default=None,
        metadata={
            "help": "Hugging Face token for gated/private models and datasets. Used for hub calls only; never "
            "saved in output folders, logs or trackers. Defaults to the HF_TOKEN environment/login."
        },
    )
    use_auth_token: str | None = field(
        default=None,
        metadata={
            "help": "Accepted for compatibility with the reference command line; no effect (the hub login or "
            "--hf_access_token is used)."
        },
    )

    @property
    def token(self) -> str | None:
        return self.hf_access_token or None


SECRET_FIELDS = ("hf_access_token", "hub_token", "use_auth_token", "push_to_hub_token", "token")


def redact(value: Any, secrets: list[str]) -> Any:
    """Return ``value`` with every occurrence of a secret string replaced, recursing into containers."""
    if isinstance(value, str):
        for secret in secrets:
            if secret:
                value = value.replace(secret, "<redacted>")
        return value
    if isinstance(value, dict):
        return {k: ("<redacted>" if k in SECRET_FIELDS and v else redact(v, secrets)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)
    return value


def public_dict(obj: Any, secrets: list[str]) -> dict[str, Any]:
    """A dataclass (or args object) as a dict safe to save: secret fields blanked, secret strings redacted."""
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(vars(obj))
    return redact(data, secrets)


def hide_token_from_environment(token: str | None) -> None:
    """Make huggingface_hub use ``token`` without it living in an object that gets saved.

    Trainer and TRL save their arguments (``training_args.bin``, model cards); keeping the token out of those
    objects and in the process environment instead is what keeps it off disk. Child processes inherit it, which is
    what the user asked for by passing it.
    """
    if token:
        os.environ["HF_TOKEN"] = token


def scrub_argv(secrets: list[str | None]) -> None:
    """Replace secret values in ``sys.argv``: trackers (wandb) record the command line in their run metadata."""
    live = [s for s in secrets if s]
    sys.argv[:] = [redact(arg, live) for arg in sys.argv]


SECRET_FLAGS = ("--hf_access_token", "--use_auth_token", "--hub_token")


def drop_secret_flags(args: list[str]) -> list[str]:
    """``args`` without the flags that can carry a token, and their values: the command line of a child process,
    which anyone on the machine can read, while the child finds the token in the environment (protect_secrets)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.split("=", 1)[0] in SECRET_FLAGS:
            skip = "=" not in arg
        else:
            kept.append(arg)
    return kept


BOOL_WORDS = {"true", "false", "1", "0", "yes", "no"}


def protect_secrets(hub: HubArguments, train_args: Any | None = None) -> None:
    """Keep the hub token out of everything that gets written: saved args, trackers' copies of argv, model cards.

    ``--use_auth_token`` is a no-op switch in the reference command line; if someone passes a token there, it is
    treated as the token.
    """
    if hub.use_auth_token and hub.use_auth_token.lower() in BOOL_WORDS:
        logger.warning(
            "--use_auth_token %s has no effect here: --hf_access_token or the hub login is used", hub.use_auth_token
        )
    if hub.use_auth_token and hub.use_auth_token.lower() not in BOOL_WORDS and not hub.hf_access_token:
        hub.hf_access_token = hub.use_auth_token
    secrets = [hub.hf_access_token]
    if hub.use_auth_token and hub.use_auth_token.lower() not in BOOL_WORDS:
        secrets.append(hub.use_auth_token)
    hide_token_from_environment(hub.hf_access_token)
    if train_args is not None and getattr(train_args, "hub_token", None):
        secrets.append(train_args.hub_token)
        hide_token_from_environment(train_args.hub_token)
        train_args.hub_token = None
    scrub_argv(secrets)
    hub.use_auth_token = None
