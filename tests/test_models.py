"""Trunks, projection and classifier heads."""
import pytest
import torch

from bayes_dc.models.nets import ARCHS, Sobel, build_model


@pytest.mark.parametrize("arch, size", [("vgg-small", 28), ("vgg-small", 32), ("alexnet-bn", 64), ("vgg16-bn", 64)])
def test_feature_dimension_and_head(arch, size):
    model = build_model(arch, 3, num_outputs=7, width=8).eval()
    x = torch.randn(2, 3, size, size)
    assert model.trunk(x).shape == (2, model.feature_dim)
    assert model(x).shape == (2, 7)


def test_sobel_sees_edges_not_brightness():
    sobel = Sobel(3)
    flat = torch.full((1, 3, 8, 8), 0.7)
    assert torch.allclose(sobel(flat)[..., 1:-1, 1:-1], torch.zeros(1, 2, 6, 6), atol=1e-6)
    step = torch.zeros(1, 3, 8, 8)
    step[..., 4:] = 1.0
    gx = sobel(step)[0, 0, 4]
    assert gx.abs().max() > 0.5 and gx[1].abs() < 1e-6
    assert build_model("vgg-small", 3, sobel=True, width=4).trunk.conv[0].in_channels == 2


def test_unknown_arch_lists_choices():
    with pytest.raises(ValueError, match="vgg-small"):
        build_model("resnet", 3)
    assert set(ARCHS) == {"vgg-small", "alexnet-bn", "vgg16-bn"}


def test_projection_sits_between_trunk_and_head():
    model = build_model("vgg-small", 1, num_outputs=5, width=4, projection_dim=6, projection_hidden=16).eval()
    x = torch.randn(3, 1, 28, 28)
    z = model.embed(x)
    assert z.shape == (3, 6) and torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.head.in_features == 6 and torch.allclose(model(x), model.head(z))
    assert model.trunk(x).shape == (3, model.feature_dim)        # kNN still sees the trunk features
    plain = build_model("vgg-small", 1, num_outputs=5, width=4).eval()
    assert plain.projection is None and torch.equal(plain.embed(x), plain.trunk(x))
    with pytest.raises(ValueError, match="--projection-dim"):
        build_model("vgg-small", 1, projection_dim=-1)
