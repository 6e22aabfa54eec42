import pytest
import torch

from mtseg.model import TriplanarCNN


def paper_parameter_count(n_classes: int, depth: int = 25, width: int = 32, fc: int = 192) -> int:
    """Counted by hand from §3.1: bias-free convolutions followed by BN (2 parameters per channel)."""
    first = 1 * width * 9 + 2 * width
    others = (depth - 1) * (width * width * 9 + 2 * width)
    head = (3 * width * fc + 2 * fc) + (fc * fc + 2 * fc) + (fc * n_classes + n_classes)
    return first + others + head


@pytest.mark.parametrize("n_classes", [2, 3, 7, 8, 9])
def test_paper_configuration_parameter_count(n_classes):
    model = TriplanarCNN(n_classes)
    assert model.patch_size == 51
    assert model.n_params == paper_parameter_count(n_classes)
    assert TriplanarCNN(9).n_params == 280_873


def test_patch_forward_shape_and_shared_stack():
    model = TriplanarCNN(4, depth=3, width=8, fc_width=16).eval()
    assert model.patch_size == 7
    planes = torch.randn(5, 3, 7, 7)
    logits = model(planes)
    assert logits.shape == (5, 4)
    # one stack for the three planes: the head sees [stack(axial), stack(sagittal), stack(coronal)]
    per_plane = [model.features(planes[:, p : p + 1]).flatten(1) for p in range(3)]
    assert per_plane[0].shape == (5, 8)
    head_input = torch.cat(per_plane, dim=1)[:, :, None, None]
    torch.testing.assert_close(model.classify_features(head_input).flatten(1), logits)
    conv = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert len(conv) == 3 and all(c.padding == (0, 0) for c in conv)
    assert conv[0].in_channels == 1


def test_stack_runs_fully_convolutionally_on_whole_slices():
    model = TriplanarCNN(3, depth=4, width=6, fc_width=10).eval()
    slices = torch.randn(2, 1, 30, 25)
    features = model.features(slices)
    assert features.shape == (2, 6, 30 - 8, 25 - 8)
    # the feature at one output position equals the feature of the patch around it
    patch = slices[:, :, 5 : 5 + 9, 7 : 7 + 9]
    torch.testing.assert_close(model.features(patch)[..., 0, 0], features[..., 5, 7], rtol=1e-5, atol=1e-5)
    head = model.classify_features(torch.randn(2, 18, 4, 4))
    assert head.shape == (2, 3, 4, 4)


def test_bad_shapes_and_settings_are_errors():
    model = TriplanarCNN(3, depth=3, width=4, fc_width=8)
    with pytest.raises(ValueError, match=r"\(B, 3, 7, 7\)"):
        model(torch.randn(2, 3, 9, 9))
    with pytest.raises(ValueError, match="at least 2 classes"):
        TriplanarCNN(1)
    with pytest.raises(ValueError, match="model.depth"):
        TriplanarCNN(3, depth=0)
