"""Models that share their first layers run them once (rlhf.models.shared_layers), with the results of separate runs."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from rlhf.models.reward import score_sequences, score_with_each
from rlhf.models.shared_layers import SharedLayers, shared_depth
from rlhf.ppo.models import causal_lm_logprobs, position_ids_from_mask

CONFIG = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
)  # fmt: skip


def perturbed(model, layers, seed=1):
    """A copy of ``model`` whose given decoder layers (and head) are changed: what LoRA on the last layers does."""
    torch.manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for i in layers:
            for p in other.model.layers[i].parameters():
                p.add_(0.1 * torch.randn_like(p))
        head = other.score if hasattr(other, "score") else other.lm_head
        head.weight.add_(0.1 * torch.randn_like(head.weight))
    return other


def layer_calls(model, index):
    calls = []
    model.model.layers[index].register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_shared_depth_counts_the_first_layers_with_equal_weights():
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    assert shared_depth(lm, copy.deepcopy(lm)) == 4
    assert shared_depth(lm, perturbed(lm, [2, 3])) == 2
    assert shared_depth(lm, perturbed(lm, [0])) == 0
    # A reward model made from the same backbone: its head is not part of what the layers compute.
    classifier = LlamaForSequenceClassification(LlamaConfig(**CONFIG, num_labels=1))
    classifier.model.load_state_dict(lm.model.state_dict())
    assert shared_depth(lm, classifier) == 4
    other_embeddings = copy.deepcopy(lm)
    with torch.no_grad():
        other_embeddings.model.embed_tokens.weight[5] += 1
    assert shared_depth(lm, other_embeddings) == 0  # equal layers on other inputs compute other things


@pytest.mark.parametrize("bf16", [False, True])
def test_reward_models_sharing_layers_score_as_they_do_alone(bf16):
    """Two reward models with equal first layers, scored together: the scores of each scored alone, bit for bit,
    and the follower's shared layers run once (on the first batch, for the check) instead of once a batch."""
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(LlamaConfig(**CONFIG, num_labels=1)).eval()
    rm2 = perturbed(rm, [2, 3])
    sequences = [torch.randint(1, 64, (n,)).tolist() for n in (3, 9, 5, 12, 7, 4, 11)]
    first, shared_layer = layer_calls(rm2, 0), layer_calls(rm2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        together = score_with_each([rm, rm2], sequences, pad_token_id=0, batch_size=3)
        batches = len(shared_layer) - 1  # the first batch runs twice: shared, then in full for the check
        alone = [score_sequences(model, sequences, pad_token_id=0, batch_size=3) for model in (rm, rm2)]
    assert batches == 3 and len(first) == 1 + 3  # the check's full run, then the three separate batches
    assert torch.equal(together[0], alone[0]) and torch.equal(together[1], alone[1])
    assert not torch.equal(alone[0], alone[1])  # two different judges


def test_policies_sharing_layers_give_their_own_log_probs_on_left_padded_batches():
    """The KL's two policies: left-padded prompts with position ids, log-probs of the response positions."""
    torch.manual_seed(0)
    sft = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    ppo = perturbed(sft, [3])
    ids = torch.randint(1, 64, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[1, :2] = 0
    ids = ids.masked_fill(mask == 0, 0)
    inputs = (ids, mask, position_ids_from_mask(mask), 6, 0.7)
    shared = SharedLayers(sft, [ppo])
    with torch.no_grad():
        for _ in range(2):  # the first call checks, the second is the shared run alone
            ref, policy = shared(lambda lm: causal_lm_logprobs(lm, *inputs))
            assert torch.equal(ref, causal_lm_logprobs(sft, *inputs))
            assert torch.equal(policy, causal_lm_logprobs(ppo, *inputs))
    assert shared.depths == [3]


def test_a_follower_whose_layers_compute_otherwise_runs_in_full_with_a_warning(caplog):
    """Equal weights, but the layers read a setting that is not a weight (the norm's epsilon): the check on the
    first call sees the difference, and the follower runs on its own from then on."""
    torch.manual_seed(0)
    lead = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    follower = LlamaForCausalLM(LlamaConfig(**{**CONFIG, "rms_norm_eps": 0.5})).eval()
    follower.load_state_dict(lead.state_dict())
    ids = torch.randint(1, 64, (2, 6))
    shared = SharedLayers(lead, [follower])
    assert shared.depths == [4]
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        results = shared(lambda lm: lm(input_ids=ids).logits)
        again = shared(lambda lm: lm(input_ids=ids).logits)
        assert torch.equal(results[1], follower(input_ids=ids).logits) and torch.equal(again[1], results[1])
    assert shared.depths == [0] and "differs when run from the lead's layer 4" in caplog.text


def test_lead_and_follower_must_see_the_same_batch():
    torch.manual_seed(0)
    lead = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    follower = perturbed(lead, [3])
    ids = torch.randint(1, 64, (2, 6))
    shared = SharedLayers(lead, [follower])
    originals = list(follower.model.layers)
    mismatch = r"states of shape \(2, 6, 32\) replayed for a batch of \(2, 4, 32\)"
    with torch.no_grad(), pytest.raises(RuntimeError, match=mismatch):
        shared(lambda lm: lm(input_ids=ids if lm is lead else ids[:, :4]).logits)
    assert list(follower.model.layers) == originals  # its own layers are back after the failed call
