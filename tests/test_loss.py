"""The loop's loss equals transformers' labels loss, with pads skipped and the logits never held whole."""
import pytest
import torch
import torch.nn.functional as F

from alphadecay.training.loss import NextTokenLoss, linear_cross_entropy, prediction_targets
import forklaunch
from conftest import tiny_llama

CPU = torch.device("cpu")


def padded_batch(lengths, length=24, vocab=500, left=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (len(lengths), length), generator=g)
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        if left:
            mask[row, length - n:] = 1
        else:
            mask[row, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask


def hf_loss_and_grads(model, ids, mask):
    model.zero_grad(set_to_none=True)
    labels = ids.masked_fill(mask == 0, -100)
    # A token right after a (left) pad is not predicted: the pad carries no context. (Labels alone would count
    # it; with the right padding the loop uses there is no such token.)
    labels[:, 1:].masked_fill_(mask[:, :-1] == 0, -100)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def our_loss_and_grads(model, ids, mask):
    model.zero_grad(set_to_none=True)
    loss_fn = NextTokenLoss(model)
    loss = loss_fn(**loss_fn.inputs(ids, mask, CPU))
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def max_relative_error(a, b):
    return max(((a[k] - b[k]).norm() / b[k].norm()).item() for k in b)


def test_prediction_targets_skip_pads_and_flag_right_padding():
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (ids != 0).long()
    positions, targets, right = prediction_targets(ids, mask)
    # Grid (2 rows x 3 predicting positions): row 0 predicts 6, 7 (position 2 would predict a pad);
    # row 1 predicts 9 only.
    assert positions.tolist() == [0, 1, 3] and targets.tolist() == [6, 7, 9] and right
    left = torch.tensor([[0, 5, 6, 7]])
    positions, targets, right = prediction_targets(left, (left != 0).long())
    assert positions.tolist() == [1, 2] and targets.tolist() == [6, 7] and not right


@pytest.mark.parametrize("left", [False, True])
def test_llama_loss_and_gradients_equal_the_labels_loss(left):
    model = tiny_llama()
    ids, mask = padded_batch([24, 17, 5, 24], left=left)
    ref_loss, ref_grads = hf_loss_and_grads(model, ids, mask)
    loss, grads = our_loss_and_grads(model, ids, mask)
    assert torch.allclose(loss, ref_loss, rtol=1e-6)
    assert max_relative_error(grads, ref_grads) < 1e-5
    inputs = NextTokenLoss(model).inputs(ids, mask, CPU)
    # Right padding runs mask-free (the causal kernel); any other layout keeps the mask.
    assert (inputs["attention_mask"] is None) == (not left)


def test_gpt2_tied_head_loss_and_gradients_equal_the_labels_loss():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=500, n_positions=64,
                                       pad_token_id=0)).eval()     # eval: no dropout, so both runs match
    ids, mask = padded_batch([24, 9, 16])
    ref_loss, ref_grads = hf_loss_and_grads(model, ids, mask)
    loss, grads = our_loss_and_grads(model, ids, mask)
    assert NextTokenLoss(model).fused
    assert torch.allclose(loss, ref_loss, rtol=1e-6)
    assert max_relative_error(grads, ref_grads) < 1e-5


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_linear_cross_entropy_matches_the_plain_formula(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(300, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 300, (40,))
    ref = F.cross_entropy(hidden @ weight.t(), targets)
    ref_h, ref_w = torch.autograd.grad(ref * 0.5, (hidden, weight))   # a non-unit upstream gradient
    loss = linear_cross_entropy(hidden, weight, targets, chunk=chunk)
    dh, dw = torch.autograd.grad(loss * 0.5, (hidden, weight))
    assert torch.allclose(loss, ref, rtol=1e-12)
    assert torch.allclose(dh, ref_h, rtol=1e-10, atol=1e-14) and torch.allclose(dw, ref_w, rtol=1e-10, atol=1e-14)
    with torch.no_grad():   # evaluation: the value only
        assert torch.allclose(linear_cross_entropy(hidden, weight, targets, chunk=chunk), ref, rtol=1e-12)


def test_bfloat16_gradients_are_as_close_to_float32_as_the_labels_loss():
    model32 = tiny_llama()
    ids, mask = padded_batch([24, 13, 24, 3], seed=1)
    _, exact = hf_loss_and_grads(model32, ids, mask)
    model16 = tiny_llama().to(torch.bfloat16)
    _, hf16 = hf_loss_and_grads(model16, ids, mask)
    _, ours16 = our_loss_and_grads(model16, ids, mask)
    to32 = lambda grads: {k: v.float() for k, v in grads.items()}  # noqa: E731
    assert max_relative_error(to32(ours16), exact) < 2 * max_relative_error(to32(hf16), exact) + 1e-3


# Eight sequences with very different numbers of predicted tokens (the fourth predicts none).
UNEVEN_LENGTHS = [24, 3, 17, 1, 24, 9, 12, 20]


def _accumulated(batch_size, ids, mask):
    """The loop's accumulate_gradients on one rank over micro-batches of ``batch_size`` sequences."""
    from alphadecay.training.loop import accumulate_gradients
    from alphadecay.training.parallel.wrap import parallelize
    from alphadecay.training.parallel.runtime import Runtime

    rt = Runtime(rank=0, local_rank=0, world_size=1, device=CPU)
    model = tiny_llama()
    loss_fn = NextTokenLoss(model)
    net = parallelize(loss_fn, world_size=1, device=CPU)
    micro = [loss_fn.inputs(ids[i:i + batch_size], mask[i:i + batch_size], CPU) for i in range(0, len(ids), batch_size)]
    loss_sum, learned = accumulate_gradients(net, micro, rt)
    return loss_sum, int(learned), {k: p.grad.clone() for k, p in model.named_parameters()}


def test_update_loss_is_token_weighted_whatever_the_micro_batches():
    """1 x 8, 2 x 4 and 8 x 1 (batch size x accumulation) give the full batch's per-token mean and its gradient."""
    ids, mask = padded_batch(UNEVEN_LENGTHS)
    ref_loss, ref_grads = our_loss_and_grads(tiny_llama(), ids, mask)
    predicted = sum(max(n - 1, 0) for n in UNEVEN_LENGTHS)
    for batch_size in (8, 2, 1):
        loss, learned, grads = _accumulated(batch_size, ids, mask)
        assert learned == predicted
        assert abs(loss.item() - ref_loss.item()) <= 1e-6 * ref_loss.item(), batch_size
        assert max_relative_error(grads, ref_grads) < 1e-6, batch_size
    # The mean of per-micro-batch means (the loop's old loss) is far outside the tolerance: the test can fail.
    per_sequence = [our_loss_and_grads(tiny_llama(), ids[i:i + 1], mask[i:i + 1])[0] for i in range(8)]
    averaged = torch.stack([x for x in per_sequence if torch.isfinite(x)]).mean()
    assert abs(averaged.item() - ref_loss.item()) > 100 * 1e-6 * ref_loss.item()


def test_update_loss_is_token_weighted_over_two_ranks(tmp_path):
    """2 ranks (DDP, gloo), each 4 of the 8 sequences as 1 x 4, 2 x 2 and 4 x 1: the same gradient and logged
    loss as one process over all 8."""
    from conftest import REPO

    forklaunch.run_two_ranks(REPO / "tests" / "dist" / "token_weighted.py", tmp_path)
    ids, mask = padded_batch(UNEVEN_LENGTHS)
    ref_loss, ref_grads = our_loss_and_grads(tiny_llama(), ids, mask)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert sorted(ranks[0]) == ["1x4", "2x2", "4x1"]
    for split, result in ranks[0].items():
        assert result["learned"] == sum(max(n - 1, 0) for n in UNEVEN_LENGTHS)
        assert abs(result["loss"] - ref_loss.item()) <= 1e-6 * ref_loss.item(), split
        assert max_relative_error(result["grads"], ref_grads) < 1e-6, split
        assert all(torch.equal(result["grads"][k], ranks[1][split]["grads"][k]) for k in ref_grads)
