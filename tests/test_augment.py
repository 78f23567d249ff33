"""bayes_dc.data.augment: crops land where the boxes say, flips mirror, colour stays in range, all seeded."""
import pytest
import torch
from torch.nn import functional as F

from bayes_dc.data.augment import Augmenter, color_distortion, crop_flip, resized_crop, resized_crop_boxes


def images(b=6, c=1, size=12, seed=0):
    return torch.randint(0, 256, (b, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_full_box_is_the_identity_and_flip_mirrors():
    x = images().float() / 255
    full = torch.tensor([[0.5, 0.5, 1.0, 1.0]]).repeat(6, 1)
    no_flip = torch.zeros(6, dtype=torch.bool)
    assert torch.allclose(resized_crop(x, full, no_flip), x, atol=1e-6)
    assert torch.allclose(resized_crop(x, full, ~no_flip), x.flip(-1), atol=1e-6)


def test_half_box_is_the_half_image_upsampled():
    x = images(b=2, c=3, size=8).float() / 255
    left_half = torch.tensor([[0.25, 0.5, 0.5, 1.0]]).repeat(2, 1)
    out = resized_crop(x, left_half, torch.zeros(2, dtype=torch.bool))
    expected = F.interpolate(x[..., :4], size=(8, 8), mode="bilinear", align_corners=False)
    # the last column samples at 3.25, between the box's edge pixel and the real pixel beyond it (a crop of a
    # larger image), where interpolating the half on its own clamps at the edge instead
    assert torch.allclose(out[..., :7], expected[..., :7], atol=1e-5)
    assert torch.allclose(out[..., 7], 0.75 * x[..., 3] + 0.25 * x[..., 4], atol=1e-5)


def test_boxes_lie_inside_the_image_with_area_in_scale():
    boxes = resized_crop_boxes(5000, (0.3, 0.8), torch.Generator().manual_seed(0))
    cx, cy, w, h = boxes.T
    assert bool(((cx - w / 2) >= -1e-12).all() and ((cx + w / 2) <= 1 + 1e-12).all())
    assert bool(((cy - h / 2) >= -1e-12).all() and ((cy + h / 2) <= 1 + 1e-12).all())
    area = w * h
    # clipping a side at 1 can only shrink the area below the drawn share, never grow it
    assert float(area.max()) <= 0.8 + 1e-9 and float(area.quantile(0.01)) >= 0.25
    ratio = w / h
    assert float(ratio.min()) >= 0.3 and float(ratio.max()) <= 4 / 0.3


def test_crop_flip_moves_pixels_without_changing_them():
    x = images(b=50)
    out = crop_flip(x, 2, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    inner = out[:, :, 2:-2, 2:-2]                     # never padding: a shifted (maybe mirrored) window of x
    for i in range(50):
        windows = [x[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(inner[i], w) or torch.equal(inner[i], w.flip(-1)) for w in windows)


def test_color_distortion_stays_in_range_and_greys_some_images():
    x = images(b=2000, c=3, size=4).float() / 255
    out = color_distortion(x, torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1
    grey = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    assert 0.15 < float(grey.float().mean()) < 0.25            # grayscale with probability 0.2
    untouched = (out == x).flatten(1).all(1)
    assert 0.02 < float(untouched.float().mean()) < 0.25       # no jitter (0.2) and no grey (0.8): ~0.16


@pytest.mark.parametrize("kind", ["none", "crop-flip", "resized-crop"])
@pytest.mark.parametrize("channels", [1, 3])
def test_augmenter_keeps_shapes_and_is_seeded(kind, channels):
    x = images(c=channels)
    aug = Augmenter(kind, padding=2, scale=(0.2, 1.0))
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == torch.float32 and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert torch.equal(a, x.float() / 255) if kind == "none" else not torch.equal(a, c)


@pytest.mark.parametrize("kwargs,match", [({"kind": "mixup"}, "--augment"), ({"scale": (0.0, 1.0)}, "--crop-scale"),
                                          ({"scale": (0.8, 0.5)}, "--crop-scale"), ({"padding": -1}, "--crop-padding")])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Augmenter(**kwargs)
