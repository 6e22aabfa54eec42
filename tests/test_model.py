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


def test_batch_renormalisation_trains_towards_the_inference_output_and_changes_nothing_else():
    from mtseg.model import RenormBatchNorm2d

    torch.manual_seed(0)
    bn = RenormBatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.5, 2.0)
    x = 3.0 * torch.randn(8, 4, 5, 5) + 2.0
    plain = torch.nn.BatchNorm2d(4)
    plain.load_state_dict(bn.state_dict())  # same parameters and buffers
    torch.testing.assert_close(bn.eval()(x), plain.eval()(x))  # inference is plain batch normalisation
    bn.train(), plain.train()
    torch.testing.assert_close(bn(x), plain(x))  # renorm off: plain training
    bn.load_state_dict(plain.state_dict() | {"running_mean": bn.running_mean, "running_var": bn.running_var})
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    expected = bn.eval()(x)  # normalised with the running statistics
    bn.train().renorm = (1e6, 1e6)  # no clipping: training output equals the inference output
    torch.testing.assert_close(bn(x), expected, atol=1e-4, rtol=1e-4)
    bn.renorm = (1.0, 0.0)  # r = 1, d = 0: plain batch normalisation
    bn.load_state_dict(before)
    plain.load_state_dict(before)
    torch.testing.assert_close(bn(x), plain.train()(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_mean, plain.running_mean)  # running statistics updated as usual
