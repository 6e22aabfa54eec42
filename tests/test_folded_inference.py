"""Dense inference's fast paths: batch normalisation folded into the convolutions (exact), bf16,
the mask's bounding box; the training network is never changed."""

import pytest
import torch

from mtseg.data.triplanar import TriplanarVolume
from mtseg.inference.dense import (
    PRECISIONS, dense_probabilities, inference_dtype, inference_network, native_bf16, patch_probabilities, segment_volume,
)
from mtseg.model import RenormBatchNorm2d, TriplanarCNN


# a depth-3 network with non-trivial batch-norm statistics and affine parameters (eval mode far from the identity)
from test_inference import net  # noqa: E402,F401 (fixture)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_folded_network_equals_the_network_in_eval_mode(net):
    folded = net.folded()
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Dropout)) for m in folded.modules())
    assert all(m.bias is not None for m in folded.modules() if isinstance(m, torch.nn.Conv2d))
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())
    planes = torch.randn(64, 3, net.patch_size, net.patch_size)
    with torch.no_grad():
        expected = net.eval()(planes)
        assert (folded(planes) - expected).abs().max() <= 1e-5
        slices = torch.randn(3, 1, 20, 17)  # whole slices, as dense inference runs them
        assert (folded.features(slices) - net.features(slices)).abs().max() <= 1e-5


def test_dense_inference_with_folding_equals_the_unfolded_network_patch_by_patch(net):
    volume = TriplanarVolume(torch.randn(9, 8, 7), radius=3, pad_value=0.2)
    before = state(net)
    net.train()
    dense = dense_probabilities(net, volume, slab=3)
    unfolded = patch_probabilities(net, volume, torch.arange(9 * 8 * 7)).T.reshape(4, 9, 8, 7)
    assert (dense - unfolded).abs().max() <= 1e-5
    # the training network: same parameters and running statistics, same mode, no folded layers
    assert net.training
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert sum(isinstance(m, RenormBatchNorm2d) for m in net.modules()) == net.depth + 2


def test_inference_draws_nothing_from_the_global_random_generator(net):
    """A training run evaluates between steps: inference that drew random numbers (e.g. by initialising the
    folded convolutions) would change every later dropout mask and sample, so a run's table would depend on
    how inference is implemented."""
    volume = TriplanarVolume(torch.randn(9, 8, 7), radius=3)
    mask = torch.zeros(9, 8, 7, dtype=torch.bool)
    mask[2:7, 1:6, 1:5] = True
    for precision in ("fp32", "bf16"):
        before = torch.get_rng_state()
        segment_volume(net, volume, mask, channels=(0, 2), slab=2, precision=precision)
        net.folded()
        assert torch.equal(torch.get_rng_state(), before), precision


def test_the_folded_copy_follows_the_network_after_a_training_step(net):
    volume = TriplanarVolume(torch.randn(7, 7, 6), radius=3)
    first = dense_probabilities(net, volume)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()
    loss = net(torch.randn(16, 3, net.patch_size, net.patch_size)).logsumexp(1).mean()  # updates running stats too
    loss.backward()
    optimizer.step()
    second = dense_probabilities(net, volume)
    assert (second - first).abs().max() > 1e-3, "inference used the parameters of before the step"
    patchwise = patch_probabilities(net, volume, torch.arange(7 * 7 * 6)).T.reshape(4, 7, 7, 6)
    assert (second - patchwise).abs().max() <= 1e-5


def test_only_the_masks_bounding_box_is_computed_and_the_result_is_the_same(net):
    volume = TriplanarVolume(torch.randn(12, 11, 10), radius=3)
    full = segment_volume(net, volume, channels=None)
    mask = torch.zeros(12, 11, 10, dtype=torch.bool)
    mask[7:11, 1:4, 2:9] = torch.rand(4, 3, 7) > 0.3  # a corner of the volume, sparse
    mask[8, 2, 5] = True
    for slab in (None, 2):
        result = segment_volume(net, volume, mask, channels=[0, 3], slab=slab)
        assert torch.equal(result.labels, torch.where(mask, full.labels, 0))
        torch.testing.assert_close(result.probabilities[0], torch.where(mask, full.probabilities[0], 1.0), atol=1e-6, rtol=0)
        torch.testing.assert_close(result.probabilities[1], torch.where(mask, full.probabilities[3], 0.0), atol=1e-6, rtol=0)
    empty = segment_volume(net, volume, torch.zeros(12, 11, 10, dtype=torch.bool), channels=[0, 1])
    assert not empty.labels.any() and torch.equal(empty.probabilities[0], torch.ones(12, 11, 10))
    assert not empty.probabilities[1].any()


def test_bf16_is_close_to_fp32_and_precision_is_checked(net):
    volume = TriplanarVolume(torch.rand(10, 9, 8), radius=3)
    fp32 = segment_volume(net, volume, channels=None, precision="fp32")
    bf16 = segment_volume(net, volume, channels=None, precision="bf16")
    assert bf16.probabilities.dtype == torch.float32
    assert (bf16.probabilities - fp32.probabilities).abs().max() <= 0.05
    assert (bf16.labels == fp32.labels).double().mean() >= 0.95
    assert all(p.dtype == torch.float32 for p in net.parameters()), "the training network stays fp32"
    # bf16 where the work is: the 3x3 convolutions after the first; the intensities' convolution and the head in fp32
    mixed = inference_network(net, torch.bfloat16)
    convolutions = [m for m in mixed.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.weight.dtype for c in convolutions] == [torch.float32] + [torch.bfloat16] * (net.depth - 1)
    assert all(m.weight.dtype == torch.float32 for m in mixed.head if isinstance(m, torch.nn.Conv2d))
    assert mixed.features(torch.rand(1, 1, 9, 9)).dtype == torch.bfloat16
    cpu = torch.device("cpu")
    assert inference_dtype("fp32", cpu) == torch.float32 and inference_dtype("bf16", cpu) == torch.bfloat16
    assert inference_dtype("auto", cpu) == (torch.bfloat16 if native_bf16(cpu) else torch.float32)
    assert PRECISIONS == ("auto", "fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        segment_volume(net, volume, precision="fp16")


def test_slabs_from_slab_voxels_have_equal_thickness_and_the_same_result(net, monkeypatch):
    import mtseg.inference.dense

    boxes = []
    segment_box = mtseg.inference.dense._segment_box
    monkeypatch.setattr(mtseg.inference.dense, "_segment_box", lambda n, v, box, *a: boxes.append(box) or segment_box(n, v, box, *a))
    volume = TriplanarVolume(torch.randn(6, 5, 11), radius=3)
    whole = dense_probabilities(net, volume, slab=11)
    assert boxes == [(0, 6, 0, 5, 0, 11)]
    boxes.clear()
    # 5 slices of 30 voxels fit in 150: 3 slabs, of equal thickness (4, 4, 3), not 5, 5, 1
    thin = segment_volume(net, volume, channels=None, slab_voxels=150).probabilities
    assert [box[4:] for box in boxes] == [(0, 4), (4, 8), (8, 11)]
    assert (thin - whole).abs().max() <= 1e-5
    boxes.clear()
    # with a mask, each slab's own bounding box in x and y, slabs over the mask's extent in z only
    mask = torch.zeros(6, 5, 11, dtype=torch.bool)
    mask[1, 1:3, 2] = mask[4, 3, 7] = True
    segment_volume(net, volume, mask, slab=3)
    assert boxes == [(1, 2, 1, 3, 2, 5), (4, 5, 3, 4, 5, 8)]
