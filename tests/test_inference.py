"""Dense whole-volume inference equals patch-by-patch inference, borders included."""

import pytest
import torch

from mtseg.data.triplanar import TriplanarVolume
from mtseg.inference.dense import dense_probabilities, patch_probabilities
from mtseg.model import TriplanarCNN


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = TriplanarCNN(4, depth=3, width=6, fc_width=10)
    # non-trivial batch-norm statistics, so eval mode really differs from identity
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model


def test_dense_equals_patch_by_patch_at_every_voxel(net):
    volume = TriplanarVolume(torch.randn(13, 11, 9), radius=3, pad_value=0.3)
    dense = dense_probabilities(net, volume, slab=4)  # slabs 4 + 4 + 1: a partial last slab
    assert dense.shape == (4, 13, 11, 9)
    every_voxel = torch.arange(13 * 11 * 9)
    patchwise = patch_probabilities(net, volume, every_voxel).T.reshape(4, 13, 11, 9)
    assert (dense - patchwise).abs().max() <= 1e-4
    torch.testing.assert_close(dense.sum(0), torch.ones(13, 11, 9))
    assert net.training, "the network's mode is restored"


def test_slab_size_does_not_change_the_result(net):
    volume = TriplanarVolume(torch.randn(8, 10, 12), radius=3)
    whole = dense_probabilities(net, volume, slab=12)
    for slab in (1, 5, 7):
        assert (dense_probabilities(net, volume, slab=slab) - whole).abs().max() <= 1e-5


def test_volume_padding_must_match_the_network(net):
    with pytest.raises(ValueError, match="padded by 2 voxels, the network needs 3"):
        dense_probabilities(net, TriplanarVolume(torch.randn(5, 5, 5), radius=2))


def test_segment_volume_keeps_labels_and_requested_channels_inside_the_mask(net):
    from mtseg.inference.dense import segment_volume

    volume = TriplanarVolume(torch.randn(9, 8, 7), radius=3)
    full = dense_probabilities(net, volume)
    mask = torch.rand(9, 8, 7) > 0.3
    result = segment_volume(net, volume, mask, channels=[2, 0], slab=3)
    assert result.labels.dtype == torch.uint8
    assert torch.equal(result.labels, torch.where(mask, full.argmax(0), 0).to(torch.uint8))  # no near-ties here
    assert result.channels == (2, 0)
    torch.testing.assert_close(result.probabilities[0], torch.where(mask, full[2], 0.0), atol=1e-6, rtol=0)
    # background has probability 1 outside the mask
    torch.testing.assert_close(result.probabilities[1], torch.where(mask, full[0], 1.0), atol=1e-6, rtol=0)
    assert segment_volume(net, volume, channels=[]).probabilities is None
