"""``--push_to_hub``: upload a published folder (SFT, reward model, PPO ``final/``) to the Hugging Face hub.

What is uploaded is the folder users would upload by hand: the model, tokenizer, prompt format, metrics and our model
card. The Trainer's checkpoints, tracker logs and our local bookkeeping (``COMPLETE.json``, temporaries) stay home.
The token comes from the hub login or ``HF_TOKEN`` (where ``protect_secrets`` put ``--hf_access_token``): it is
never an argument that could be logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rlhf.errors import RunError, UsageError, first_line

logger = logging.getLogger("rlhf.outputs.hub")

NOT_UPLOADED = ["checkpoints/**", "runs/**", "COMPLETE.json", ".*", ".*/**"]


def hub_repo_id(hub_model_id: str | None, output_dir: str | Path) -> str:
    """The repository to push to: ``--hub_model_id``, else the output folder's name (as the Trainer does); checked
    here, before any training, so that a malformed name is a one-line usage error, not a failure at the end."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = hub_model_id or Path(output_dir).resolve().name
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise UsageError(f"--hub_model_id {repo_id!r}: not a valid hub repository name ({first_line(err)})") from None
    return repo_id


def push_folder(folder: str | Path, repo_id: str, private: bool | None = None) -> None:
    """Create the repository if needed and upload ``folder`` (already published and complete) in one commit."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            ignore_patterns=NOT_UPLOADED,
            commit_message=f"Upload {Path(folder).name} (rlhf)",
        )
    except Exception as err:
        raise RunError(
            f"--push_to_hub: the model is saved in {folder}, but uploading it to {repo_id} failed "
            f"({first_line(err)}); upload that folder once the hub is reachable"
        ) from None
    logger.info("pushed %s to the hub as %s", folder, repo_id)
