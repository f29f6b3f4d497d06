"""Intel Gaudi through optimum-habana: trainers, training arguments, accelerator and lazy-mode/HPU-graph hooks.

optimum-habana 1.21.2 pins transformers 4.55 and its ``optimum.habana.trl`` builds on trl 0.9.6, so it lives in its
own environment (requirements-gaudi.txt). When that stack is installed (``on_gaudi_stack()``), the SFT and reward
stages train with ``GaudiSFTTrainer`` / ``GaudiRewardTrainer`` and PPO runs on ``GaudiAccelerator``; on an HPU
(``--use_habana``) with lazy mode and HPU graphs, on the CPU otherwise (``use_habana=False, use_cpu=True``), which
is how the contract suite (tests/test_gaudi_contract.py) runs them without the hardware.

Users keep one set of flags: the scripts parse TRL 1.x's names (``--max_length``, ``--packing``,
``--completion_only_loss``, ``--trust_remote_code``); on this stack ``LegacySFTConfig`` / ``LegacyRewardConfig``
(rlhf.runtime.gaudi_configs) provide them on top of transformers 4.55's ``TrainingArguments``, and
``gaudi_training_args`` maps them onto optimum-habana's config classes. Data, prompt format and output folders are
the CUDA path's.

Nothing here imports optimum-habana or habana_frameworks at module import: the CUDA/CPU stack imports this module.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from rlhf.errors import UsageError
from rlhf.runtime.device import DeviceRuntime

logger = logging.getLogger("rlhf.runtime.gaudi")

GAUDI_INSTALL_HINT = (
    "install Habana's SynapseAI software with its PyTorch bridge (habana_frameworks, see Habana's installation "
    "guide) and then `pip install -r requirements-gaudi.txt -c constraints-gaudi.txt`"
)


def import_optimum_habana() -> Any:
    """``import optimum.habana``; without the Habana software its import-time version check fails: one line then."""
    try:
        import optimum.habana as oh
    except (ImportError, IndexError, OSError) as err:  # IndexError: no habana-torch-plugin in `pip list`
        raise UsageError(
            f"optimum-habana is installed but cannot be imported ({type(err).__name__}: {err}); {GAUDI_INSTALL_HINT}"
        ) from None
    return oh


# Our flags that optimum-habana rejects or that we set ourselves.
_NOT_COPIED = {"use_cpu", "use_habana", "use_lazy_mode", "gaudi_config_name"}


def gaudi_training_args(train_args: Any, backend: Any, backend_args: Any, config_class: type | None = None) -> Any:
    """optimum-habana training arguments (``config_class``, default GaudiTrainingArguments) from our parsed flags
    (see ``gaudi_training_kwargs``). On an HPU, building them sets the device up (it needs the hardware)."""
    import_optimum_habana()
    from optimum.habana import GaudiTrainingArguments

    config_class = config_class or GaudiTrainingArguments
    try:
        return config_class(**gaudi_training_kwargs(train_args, backend, backend_args, config_class))
    except ValueError as err:
        raise UsageError(f"invalid Gaudi training arguments: {' '.join(str(err).split())}") from None


def gaudi_training_kwargs(train_args: Any, backend: Any, backend_args: Any, config_class: type) -> dict[str, Any]:
    """Keyword arguments of ``config_class`` (GaudiTrainingArguments or a subclass) for our parsed flags.

    Values the user (or the script's defaults) changed carry over; fields left at transformers' defaults take
    optimum-habana's defaults (adam_epsilon, half_precision_backend=hpu_amp, ddp_find_unused_parameters=False, ...).
    On an HPU: use_habana, lazy mode per ``--use_lazy_mode``, ``--gaudi_config_name``; elsewhere the CPU.
    """
    if train_args.fp16:
        raise UsageError("--fp16 is not supported by optimum-habana: use --bf16 (Gaudi autocast)")
    if getattr(train_args, "tf32", None):
        raise UsageError("--tf32 is not supported by optimum-habana")
    from transformers import TrainingArguments

    accepted = {f.name: f for f in dataclasses.fields(config_class) if f.init}
    kwargs: dict[str, Any] = {}
    for base_field in dataclasses.fields(TrainingArguments):
        name = base_field.name
        if not base_field.init or name in _NOT_COPIED or name not in accepted:
            continue
        value = getattr(train_args, name)
        if base_field.default is not dataclasses.MISSING:
            default = base_field.default
        elif base_field.default_factory is not dataclasses.MISSING:
            default = base_field.default_factory()
        else:
            default = dataclasses.MISSING
        if name == "output_dir" or value != default:
            kwargs[name] = value
    on_hpu = backend.is_gaudi
    kwargs.update(
        use_habana=on_hpu,
        use_lazy_mode=on_hpu and backend.lazy_mode,
        use_cpu=not on_hpu,
        gaudi_config_name=backend_args.gaudi_config_name if on_hpu else None,
    )
    return kwargs


def gaudi_config(backend: Any, backend_args: Any, bf16: bool) -> Any:
    """The GaudiConfig: ``--gaudi_config_name`` (local folder/file or hub name) on an HPU, else fused AdamW and
    fused gradient clipping with bf16 autocast per ``--bf16``. GaudiTrainer uses the fused ops only on an HPU."""
    import_optimum_habana()
    from optimum.habana import GaudiConfig

    name = backend_args.gaudi_config_name
    if name and not backend.is_gaudi:
        logger.warning("--gaudi_config_name has no effect without --use_habana")
    if name and backend.is_gaudi:
        try:
            return GaudiConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"--gaudi_config_name {name}: cannot load a Gaudi config ({first})") from None
    return GaudiConfig(use_fused_adam=True, use_fused_clip_norm=True, use_torch_autocast=bool(bf16))


def prepare_hpu(lazy_mode: bool) -> None:
    """Before any model exists on an HPU: the execution mode the bridge reads at import, and optimum-habana's
    Gaudi-optimised model classes (they must replace transformers' before a model is instantiated)."""
    wanted = "1" if lazy_mode else "0"
    current = os.environ.setdefault("PT_HPU_LAZY_MODE", wanted)
    if current != wanted:
        flag = "--use_lazy_mode" if lazy_mode else "eager mode (no --use_lazy_mode)"
        raise UsageError(f"{flag} contradicts PT_HPU_LAZY_MODE={current} in the environment: unset it or change it")
    import_optimum_habana()
    from optimum.habana.transformers.modeling_utils import adapt_transformers_to_gaudi

    adapt_transformers_to_gaudi()


def pack_features(features: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """``--dataset_concatenation`` / ``--packing``: whole examples, in order, into rows of at most ``max_length``.

    No example is split (their answer-only masks stay intact); positions restart at each example, as TRL 1.x's
    packing does. Examples longer than ``max_length`` were already dropped when encoding.
    """
    rows: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "completion_mask": [], "position_ids": []}
    for feat in features:
        n = len(feat["input_ids"])
        if current["input_ids"] and len(current["input_ids"]) + n > max_length:
            rows.append(current)
            current = {"input_ids": [], "completion_mask": [], "position_ids": []}
        current["input_ids"] += feat["input_ids"]
        current["completion_mask"] += feat["completion_mask"]
        current["position_ids"] += list(range(n))
    if current["input_ids"]:
        rows.append(current)
    return rows


class AnswerOnlyCollator:
    """Right-pads SFT features; labels are the answer tokens (``completion_mask``), or all real tokens.

    ``pad_to``: pad every batch to this length (static shapes on an HPU: one compiled graph), else to the longest.
    """

    def __init__(self, pad_token_id: int, completion_only_loss: bool = True, pad_to: int | None = None) -> None:
        self.pad_token_id, self.completion_only_loss, self.pad_to = pad_token_id, completion_only_loss, pad_to

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = self.pad_to or max(len(f["input_ids"]) for f in features)
        batch = len(features)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        position_ids = torch.zeros((batch, width), dtype=torch.long)
        for row, feat in enumerate(features):
            ids = torch.tensor(feat["input_ids"], dtype=torch.long)
            n = ids.numel()
            input_ids[row, :n] = ids
            attention_mask[row, :n] = 1
            keep = torch.tensor(feat["completion_mask"], dtype=torch.bool) if self.completion_only_loss else None
            labels[row, :n] = ids if keep is None else torch.where(keep, ids, torch.full_like(ids, -100))
            positions = feat.get("position_ids")
            position_ids[row, :n] = torch.tensor(positions) if positions is not None else torch.arange(n)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "labels": labels,
        }


def reward_pairs(features: list[dict[str, list[int]]]) -> list[dict[str, list[int]]]:
    """``rlhf.data.reward_features`` in the column names of optimum-habana's reward trainer (j chosen, k rejected)."""
    return [
        {
            "input_ids_j": f["chosen_ids"],
            "attention_mask_j": [1] * len(f["chosen_ids"]),
            "input_ids_k": f["rejected_ids"],
            "attention_mask_k": [1] * len(f["rejected_ids"]),
        }
        for f in features
    ]


def carry_gaudi_generation_config(model: Any) -> None:
    """GaudiTrainer reads Gaudi-only generation options (attn_softmax_bf16, use_flash_attention, ...) from the
    model's generation config. On an HPU, adapt_transformers_to_gaudi (prepare_hpu) makes every model load with a
    GaudiGenerationConfig; elsewhere the plain one is converted here, its values unchanged."""
    from optimum.habana.transformers.generation import GaudiGenerationConfig

    current = getattr(model, "generation_config", None)
    if current is not None and not isinstance(current, GaudiGenerationConfig):
        model.generation_config = GaudiGenerationConfig.from_dict(current.to_dict())


def gaudi_sft_trainer(
    backend: Any,
    backend_args: Any,
    model: Any,
    args: Any,
    train_dataset: Any,
    eval_dataset: Any,
    processing_class: Any,
    peft_config: Any,
    callbacks: list[Any],
) -> Any:
    """GaudiSFTTrainer on our pre-tokenized features (answer-only labels, optional packing, static shapes on HPU)."""
    import_optimum_habana()
    from datasets import Dataset
    from optimum.habana.trl import GaudiSFTConfig, GaudiSFTTrainer

    gaudi_args = gaudi_training_args(args, backend, backend_args, GaudiSFTConfig)
    # The data is tokenized already: trl 0.9.6 must neither re-tokenize nor drop the answer mask column.
    gaudi_args.remove_unused_columns = False
    gaudi_args.packing = False
    gaudi_args.max_seq_length = args.max_length
    gaudi_args.dataset_kwargs = {"skip_prepare_dataset": True}

    def prepared(ds: Any) -> Any:
        if ds is None or not args.packing:
            return ds
        return Dataset.from_list(pack_features(ds.to_list(), args.max_length))

    collator = AnswerOnlyCollator(
        processing_class.pad_token_id,
        completion_only_loss=args.completion_only_loss is not False,
        pad_to=args.max_length if backend.is_gaudi else None,
    )
    return _trainer(
        GaudiSFTTrainer,
        backend,
        backend_args,
        model,
        args,
        gaudi_args,
        collator,
        [prepared(train_dataset), prepared(eval_dataset)],
        callbacks,
        tokenizer=processing_class,  # trl 0.9.6's name
        peft_config=peft_config,
    )


def gaudi_reward_trainer(
    backend: Any,
    backend_args: Any,
    model: Any,
    args: Any,
    train_dataset: Any,
    eval_dataset: Any,
    processing_class: Any,
    callbacks: list[Any],
) -> Any:
    """GaudiRewardTrainer (pairwise -log sigmoid(r_chosen - r_rejected)) on the same pairs as the CUDA path."""
    import_optimum_habana()
    from datasets import Dataset
    from optimum.habana.trl import GaudiRewardTrainer, RewardDataCollatorWithPadding

    gaudi_args = gaudi_training_args(args, backend, backend_args)
    gaudi_args.remove_unused_columns = False  # the trainer's forward takes the j/k columns, not the model's names
    gaudi_args.label_names = []  # no labels: evaluation computes the pairwise loss (compute_loss) instead

    def prepared(ds: Any) -> Any:
        return None if ds is None else Dataset.from_list(reward_pairs(ds.to_list()))

    static = backend.is_gaudi
    collator = RewardDataCollatorWithPadding(
        tokenizer=processing_class,
        padding="max_length" if static else True,
        max_length=args.max_length if static else None,
    )
    return _trainer(
        GaudiRewardTrainer,
        backend,
        backend_args,
        model,
        args,
        gaudi_args,
        collator,
        [prepared(train_dataset), prepared(eval_dataset)],
        callbacks,
        processing_class=processing_class,
    )


def _trainer(
    cls: type,
    backend: Any,
    backend_args: Any,
    model: Any,
    args: Any,
    gaudi_args: Any,
    collator: Any,
    datasets: list[Any],
    callbacks: list[Any],
    **kwargs: Any,
) -> Any:
    """A Gaudi trainer of ``cls`` with what both stages give it: the model (its generation config made Gaudi's),
    arguments, Gaudi config, collator, train/eval datasets, callbacks."""
    carry_gaudi_generation_config(model)
    return cls(
        model=model,
        args=gaudi_args,
        gaudi_config=gaudi_config(backend, backend_args, args.bf16),
        data_collator=collator,
        train_dataset=datasets[0],
        eval_dataset=datasets[1],
        callbacks=callbacks,
        **kwargs,
    )


def gaudi_accelerator(backend: Any, **kwargs: Any) -> Any:
    """optimum-habana's GaudiAccelerator: the HPU with --use_habana, else the CPU."""
    import_optimum_habana()
    from optimum.habana.accelerate import GaudiAccelerator

    return GaudiAccelerator(cpu=not backend.is_gaudi, **kwargs)


class GaudiRuntime(DeviceRuntime):
    """Lazy mode: ``htcore.mark_step()`` where the graph must be cut. HPU graphs (lazy mode only): ``module.forward``
    swapped for a graph-cached one inside ``graphs(module)``, the plain forward restored on exit, so training
    forwards (with gradients) never replay an inference graph. Generation uses optimum-habana's own lazy-mode/HPU
    graph path (``generate_kwargs``, as its PPO trainer does), EOS still ending a batch early.

    ``mark_step_fn``/``wrap_fn`` are ``htcore.mark_step`` and ``wrap_in_hpu_graph`` (``for_backend``); tests pass
    recorders instead.
    """

    trims_padding = False  # one minibatch shape per rollout: lazy mode compiles a graph per shape

    def __init__(
        self,
        mark_step_fn: Callable[[], None] | None,
        wrap_fn: Callable[[Any], Any] | None,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._mark_step, self._wrap = mark_step_fn, wrap_fn
        self.generate_kwargs = dict(generate_kwargs or {})
        self._graph_forward: dict[int, Any] = {}
        self.mark_steps = 0

    @classmethod
    def for_backend(cls, backend: Any) -> DeviceRuntime:
        if not backend.is_gaudi:
            return DeviceRuntime()
        if not backend.lazy_mode:
            return cls(None, None)  # eager mode: no graph to cut, no HPU graphs
        import habana_frameworks.torch.core as htcore

        try:
            from habana_frameworks.torch.hpu import wrap_in_hpu_graph
        except ImportError:  # older bridges: lazy mode without graphs
            logger.warning("HPU graphs are not available in this Habana bridge; running without them")
            wrap_in_hpu_graph = None
        generate_kwargs = {"lazy_mode": True, "hpu_graphs": wrap_in_hpu_graph is not None, "ignore_eos": False}
        return cls(htcore.mark_step, wrap_in_hpu_graph, generate_kwargs)

    def mark_step(self) -> None:
        if self._mark_step is not None:
            self._mark_step()
            self.mark_steps += 1

    @contextmanager
    def graphs(self, module: torch.nn.Module | None) -> Iterator[None]:
        if self._wrap is None or module is None:
            yield
            return
        key = id(module)
        own = module.__dict__.get("forward")  # an instance-level forward already there (e.g. accelerate's)
        if key not in self._graph_forward:
            wrapped = self._wrap(module)  # patches module.forward in place (and returns the module)
            self._graph_forward[key] = (module if wrapped is None else wrapped).forward
        module.forward = self._graph_forward[key]
        try:
            yield
        finally:
            if own is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = own
