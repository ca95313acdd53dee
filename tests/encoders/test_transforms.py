"""Image transforms: every PIL mode, odd shapes, arrays, tensors, huge, missing and corrupt files.

The output is always a finite (3, S, S) float tensor; bad inputs raise InputError naming the problem."""

import numpy as np
import pytest
import torch
from PIL import Image

from unimm.encoders import transforms
from unimm.encoders.transforms import PadToSquare, load_image
from unimm.registry import InputError

S = 32
transform = PadToSquare(S)  # mean 0.5, std 0.5: a pixel value v (0..255) becomes v / 127.5 - 1


def value(v):
    return v / 255 * 2 - 1


def check(x):
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    return x


def centre(x):
    return x[:, S // 2, S // 2]


@pytest.mark.parametrize(
    "image, rgb",
    [
        (Image.new("L", (20, 10), 100), (100, 100, 100)),
        (Image.new("1", (20, 10), 1), (255, 255, 255)),
        (Image.new("RGBA", (20, 10), (0, 0, 0, 0)), (255, 255, 255)),  # transparent -> white
        (Image.new("RGBA", (20, 10), (10, 20, 30, 255)), (10, 20, 30)),  # opaque stays
        (Image.new("LA", (20, 10), (0, 0)), (255, 255, 255)),
        (Image.new("CMYK", (20, 10), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("I;16", (20, 10), 40000), (156, 156, 156)),  # 16-bit scaled, not clipped to white
        (Image.new("I", (20, 10), 65535), (255, 255, 255)),
        (Image.new("F", (20, 10), 0.5), (128, 128, 128)),
    ],
    ids=["L", "1", "RGBA-clear", "RGBA-opaque", "LA", "CMYK", "I;16", "I", "F"],
)
def test_modes(image, rgb):
    x = check(transform(image))
    torch.testing.assert_close(centre(x), torch.tensor([value(v) for v in rgb]), atol=1 / 255, rtol=0)


def test_palette_with_and_without_transparency():
    image = Image.new("P", (20, 10), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    torch.testing.assert_close(centre(check(transform(image))), torch.tensor([value(200), value(100), value(50)]))
    image.info["transparency"] = 1
    assert load_image(image).getpixel((5, 5)) == (255, 255, 255)


def test_padding_uses_the_mean_colour():
    x = check(transform(Image.new("RGB", (40, 20), (255, 0, 0))))
    torch.testing.assert_close(x[:, 0, S // 2], torch.full((3,), value(127)))  # top edge: padding, grey 127
    torch.testing.assert_close(centre(x), torch.tensor([1.0, -1.0, -1.0]))


@pytest.mark.parametrize("size", [(1, 1), (1000, 3), (3, 1000), (1, 500)], ids=str)
def test_extreme_shapes(size):
    x = check(transform(Image.new("RGB", size, (10, 200, 30))))
    torch.testing.assert_close(centre(x), torch.tensor([value(10), value(200), value(30)]), atol=2 / 255, rtol=0)


@pytest.mark.parametrize(
    "array",
    [
        np.full((10, 20), 100, np.uint8),
        np.full((10, 20, 1), 100, np.uint8),
        np.full((10, 20, 3), 100, np.uint8),
        np.full((10, 20, 3), 100 / 255, np.float32),
        np.full((10, 20), 100 / 255, np.float64),
        np.full((10, 20, 3), 100.0),  # floats above 1 are read as 0..255
        np.full((10, 20, 3), 100 * 257, np.uint16),
        np.dstack([np.full((10, 20, 3), 100, np.uint8), np.full((10, 20, 1), 255, np.uint8)]),
    ],
    ids=["HxW", "HxWx1", "HxWx3", "float01", "float01-HxW", "float255", "uint16", "HxWx4"],
)
def test_arrays(array):
    torch.testing.assert_close(centre(check(transform(array))), torch.full((3,), value(100)), atol=1 / 255, rtol=0)


@pytest.mark.parametrize(
    "tensor",
    [torch.full((3, 10, 20), 100 / 255), torch.full((1, 10, 20), 100 / 255), torch.full((3, 10, 20), 100, dtype=torch.uint8)],
    ids=["float", "one-channel", "uint8"],
)
def test_tensors(tensor):
    torch.testing.assert_close(centre(check(transform(tensor))), torch.full((3,), value(100)), atol=1 / 255, rtol=0)


def test_float_tensor_is_clamped():
    x = check(transform(torch.full((3, 10, 20), 1.5)))
    torch.testing.assert_close(centre(x), torch.ones(3))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((10, 20, 2), np.uint8), r"image array must be HxW, HxWx3 or HxWx4 uint8, got shape \(10, 20, 2\)"),
        (np.zeros((2, 10, 20, 3), np.uint8), r"got shape \(2, 10, 20, 3\)"),
        (np.full((10, 20, 3), np.nan), "image array has NaN or infinite values"),
        (np.zeros((0, 5, 3), np.uint8), r"image has no pixels \(5x0\)"),
        (torch.rand(10, 20, 3), r"image tensor must be \(3, H, W\) or \(1, H, W\) .* got shape \(10, 20, 3\)"),
        (torch.full((3, 4, 4), float("inf")), "image tensor has NaN or infinite values"),
        (12, "unsupported image type int"),
    ],
    ids=["2-channel", "4-dim", "nan", "empty", "HWC-tensor", "inf-tensor", "int"],
)
def test_bad_inputs(bad, message):
    with pytest.raises(InputError, match=message):
        transform(bad)


def test_files(tmp_path):
    Image.new("I;16", (30, 20), 50000).save(tmp_path / "sixteen.png")
    torch.testing.assert_close(centre(check(transform(tmp_path / "sixteen.png"))),
                               torch.full((3,), value(50000 / 257)), atol=1 / 255, rtol=0)
    Image.new("RGBA", (30, 20), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    torch.testing.assert_close(centre(check(transform(str(tmp_path / "clear.png")))), torch.ones(3))


def test_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match=f"image file not found: {missing}"):
        transform(missing)
    with pytest.raises(InputError, match="image file not found"):
        transform(tmp_path)  # a folder
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(InputError, match=f"cannot read image {corrupt}: .*Is it a PNG/JPEG/WebP file"):
        transform(corrupt)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"cannot read image {truncated}"):
        transform(truncated)


def test_huge_image(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (6000, 6000), (10, 200, 30)).save(path, quality=90)
    x = check(transform(path))
    torch.testing.assert_close(centre(x), torch.tensor([value(10), value(200), value(30)]), atol=4 / 255, rtol=0)


def test_over_the_decode_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(transforms, "MAX_DECODE_PIXELS", 1_000_000)
    Image.new("RGB", (2000, 2000), (10, 200, 30)).save(tmp_path / "big.jpg")
    Image.new("RGB", (2000, 2000), (10, 200, 30)).save(tmp_path / "big.png")
    previous = Image.MAX_IMAGE_PIXELS
    shrunk = load_image(tmp_path / "big.jpg")  # JPEG: decoded at a reduced scale
    assert shrunk.width * shrunk.height <= 1_000_000
    check(transform(tmp_path / "big.jpg"))
    with pytest.raises(InputError, match=r"big\.png is 2000x2000 pixels, more than the 1 megapixels"):
        transform(tmp_path / "big.png")  # PNG cannot be decoded smaller: refused rather than using gigabytes
    assert Image.MAX_IMAGE_PIXELS == previous  # PIL's global decompression-bomb guard is left as it was


def test_repr_and_size():
    assert transform.image_size == S
    assert "PadToSquare(image_size=32" in repr(transform)
