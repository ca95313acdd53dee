"""The programmatic checker: shapes read from pixels, prompts scored requirement by requirement, answers matched."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from unimm.bench.checker import (
    detect_shapes,
    evaluate_generation,
    evaluate_understanding,
    fit_shape,
    label_components,
    normalise_answer,
    score_generation,
    to_rgb_array,
)
from unimm.bench.shapes import BACKGROUND, PALETTE, QAItem, ShapesConfig, make_split
from unimm.registry import InputError


def draw(*shapes, size=32, background=BACKGROUND):
    """Hand-drawn test image, straight with PIL at the target size (no anti-aliasing, unlike the generator).

    Each shape is ``(kind, colour, x0, y0, side)``.
    """
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    for kind, colour, x0, y0, side in shapes:
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        if kind == "circle":
            pen.ellipse(box, fill=PALETTE[colour])
        elif kind == "square":
            pen.rectangle(box, fill=PALETTE[colour])
        elif kind == "triangle":
            corners = [(x0 + (side - 1) / 2, y0), (x0 + side - 1, y0 + side - 1), (x0, y0 + side - 1)]
            pen.polygon(corners, fill=PALETTE[colour])
        else:  # a bar, which is none of the kinds
            pen.rectangle((x0, y0, x0 + side - 1, y0 + side // 4), fill=PALETTE[colour])
    return image


def degrade(image, blur=0.7, noise=12.0, seed=0):
    """Slight Gaussian blur then Gaussian pixel noise (std in 0..255 units), as a uint8 array."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)
    noisy = blurred + np.random.default_rng(seed).normal(0.0, noise, blurred.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


RED_CIRCLE = draw(("circle", "red", 10, 9, 11))
BLUE_SQUARE = draw(("square", "blue", 10, 9, 10))
CIRCLE_LEFT_OF_SQUARE = draw(("circle", "red", 2, 12, 10), ("square", "blue", 19, 10, 10))


def test_a_drawn_red_circle_is_a_red_circle():
    (det,) = detect_shapes(RED_CIRCLE)
    assert (det.colour, det.kind) == ("red", "circle")
    assert det.score > 0.9
    assert np.allclose(det.bbox, (10, 9, 21, 20), atol=0.6)
    result = score_generation(RED_CIRCLE, "a red circle")
    assert result["overall"] and result["count"] and result["colour"] and result["shape"] and result["binding"]
    assert result["position"] is None


def test_a_blue_square_is_not_a_red_circle():
    result = score_generation(BLUE_SQUARE, "a red circle")
    assert not result["colour"] and not result["shape"] and not result["binding"] and not result["overall"]
    assert result["count"]
    assert score_generation(BLUE_SQUARE, "a blue square")["overall"]
    assert not score_generation(BLUE_SQUARE, "a blue circle")["shape"]
    assert not score_generation(BLUE_SQUARE, "a red square")["colour"]


@pytest.mark.parametrize("kind", ["circle", "square", "triangle"])
@pytest.mark.parametrize("side", [8, 12])
def test_each_kind_is_told_apart_even_blurred_and_noisy(kind, side):
    image = draw((kind, "green", 9, 7, side))
    for seed, version in enumerate([image, degrade(image, blur=0.6, noise=8), degrade(image, blur=0.8, noise=12)]):
        (det,) = detect_shapes(version)
        assert (det.colour, det.kind) == ("green", kind), (seed, det)


def test_relative_position_right_and_wrong():
    ok = score_generation(CIRCLE_LEFT_OF_SQUARE, "a red circle to the left of a blue square")
    assert ok["position"] and ok["overall"]
    assert score_generation(CIRCLE_LEFT_OF_SQUARE, "a blue square to the right of a red circle")["overall"]
    for wrong in ("a red circle to the right of a blue square", "a red circle above a blue square"):
        result = score_generation(CIRCLE_LEFT_OF_SQUARE, wrong)
        assert result["binding"] and result["count"] and not result["position"] and not result["overall"]
    above = draw(("triangle", "yellow", 12, 2, 10), ("circle", "white", 11, 18, 11))
    assert score_generation(above, "a yellow triangle above a white circle")["overall"]
    assert not score_generation(above, "a yellow triangle below a white circle")["position"]
    # An object that is missing cannot stand in a relation.
    assert score_generation(above, "a yellow square above a white circle")["position"] is False


def test_count_right_and_wrong():
    assert not score_generation(CIRCLE_LEFT_OF_SQUARE, "a red circle")["count"]
    assert score_generation(CIRCLE_LEFT_OF_SQUARE, "a red circle and a blue square")["count"]
    short = score_generation(RED_CIRCLE, "a red circle to the left of a blue square")
    assert not short["count"] and not short["binding"] and not short["overall"]
    three = draw(("circle", "red", 2, 2, 9), ("square", "blue", 20, 2, 9), ("triangle", "yellow", 10, 20, 10))
    assert sorted((d.colour, d.kind) for d in detect_shapes(three)) == [
        ("blue", "square"),
        ("red", "circle"),
        ("yellow", "triangle"),
    ]
    assert not score_generation(three, "a red circle to the left of a blue square")["count"]


def test_colour_and_kind_must_belong_to_the_same_shape():
    swapped = draw(("square", "red", 2, 12, 10), ("circle", "blue", 19, 10, 10))
    result = score_generation(swapped, "a red circle to the left of a blue square")
    assert result["colour"] and result["shape"] and result["count"]
    assert not result["binding"] and not result["overall"]


def test_what_is_not_a_shape_is_found_but_not_named():
    (det,) = detect_shapes(draw(("bar", "white", 4, 10, 20)))
    assert det.kind == "unknown"
    assert detect_shapes(Image.new("RGB", (32, 32), BACKGROUND)) == []
    specks = degrade(Image.new("RGB", (32, 32), BACKGROUND), blur=0.1, noise=25)
    assert detect_shapes(specks) == []


def test_degraded_hand_drawn_scenes_still_score():
    prompts = {
        "a red circle": RED_CIRCLE,
        "a blue square": BLUE_SQUARE,
        "a red circle to the left of a blue square": CIRCLE_LEFT_OF_SQUARE,
    }
    for seed, (prompt, image) in enumerate(prompts.items()):
        result = score_generation(degrade(image, blur=0.7, noise=12, seed=seed), prompt)
        assert result["overall"], (prompt, result["detections"])


def test_generator_test_split_scores_near_perfect():
    # 300 images of the default test split, clean, and 100 slightly degraded; the accuracy is printed (-s).
    samples = make_split("test", 300, seed=0)
    clean = evaluate_generation([s.image() for s in samples], samples)
    degraded = evaluate_generation(
        [degrade(s.image(), blur=0.6, noise=8, seed=s.index) for s in samples[:100]], samples[:100]
    )
    print(f"\nchecker on its own test images: clean {clean['accuracy']}, blurred+noisy {degraded['accuracy']}")
    assert clean["accuracy"]["overall"] >= 0.98
    assert degraded["accuracy"]["overall"] >= 0.98
    assert clean["support"]["position"] == sum(bool(s.spec.relations) for s in samples) > 100
    assert clean["support"]["overall"] == 300
    assert set(clean["by_objects"]) == {1, 2}


def test_larger_scenes_score_near_perfect():
    cfg = ShapesConfig(image_size=64, min_shapes=3, max_shapes=4)
    samples = make_split("test", 40, seed=0, config=cfg)
    report = evaluate_generation([s.image() for s in samples], [s.caption for s in samples])
    assert report["accuracy"]["overall"] >= 0.98, report["accuracy"]


def test_batches_and_value_ranges():
    samples = make_split("test", 4, seed=0)
    arrays = np.stack([np.asarray(s.image()) for s in samples])
    batch = torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
    report = evaluate_generation(batch, samples, value_range=(-1, 1))
    assert report["n"] == 4 and report["accuracy"]["overall"] == 1.0
    assert np.allclose(to_rgb_array(batch[0], value_range=(-1, 1)), arrays[0], atol=1e-3)
    with pytest.raises(InputError, match=r"value_range=\(-1, 1\)"):
        to_rgb_array(batch[0])
    with pytest.raises(InputError, match="shaped \\(H, W, 3\\)"):
        to_rgb_array(np.zeros((32, 32)))
    with pytest.raises(InputError, match="4 images but 3 prompts"):
        evaluate_generation(batch, samples[:3], value_range=(-1, 1))


def test_connected_components():
    classes = np.array(
        [
            [1, 0, 0, 2],
            [0, 1, 0, 2],
            [0, 0, 0, 0],
            [1, 1, 0, 1],
        ]
    )
    eight = label_components(classes, connectivity=8)
    four = label_components(classes, connectivity=4)
    assert eight[0, 0] == eight[1, 1] != four[1, 1]  # diagonal neighbours join only with 8-connectivity
    assert eight[0, 3] == eight[1, 3] != eight[0, 0]  # classes never merge
    assert len(np.unique(eight[eight > 0])) == 4 and len(np.unique(four[four > 0])) == 5
    assert (eight == 0).sum() == (classes == 0).sum()
    with pytest.raises(InputError, match="use 8 .* or 4"):
        label_components(classes, connectivity=6)


def test_fit_shape_reads_blur_not_as_a_different_kind():
    # A 9 px triangle blurred with sigma 1 loses its apex under any threshold; the blurred fit still finds it.
    image = np.asarray(draw(("triangle", "white", 10, 10, 9)).filter(ImageFilter.GaussianBlur(1.0)), np.float32)
    alpha = (image[..., 0] - BACKGROUND[0]) / (PALETTE["white"][0] - BACKGROUND[0])
    kind, iou, box = fit_shape(alpha)
    assert kind == "triangle" and iou > 0.8
    assert np.allclose(box, (10, 10, 19, 19), atol=1.0)


def test_understanding_exact_match_per_type():
    qa = [
        QAItem("what colour is the circle?", "red", "colour"),
        QAItem("what shape is the red one?", "circle", "shape"),
        QAItem("how many shapes are there?", "two", "count"),
        QAItem("is the circle above the square?", "yes", "position"),
        {"answer": "no", "qtype": "position"},
        {
            "image": "images/000000.png",
            "conversations": [{"role": "user", "content": "<image>\nq"}, {"role": "assistant", "content": "blue"}],
            "qtype": "colour",
        },
    ]
    predictions = [" Red.", "CIRCLE", "2", "yes!", "no", "a blue one"]
    report = evaluate_understanding(predictions, qa)
    assert report["correct"] == [True, True, False, True, True, False]
    assert report["accuracy"] == {"overall": 4 / 6, "colour": 0.5, "shape": 1.0, "count": 0.0, "position": 1.0}
    assert report["support"]["position"] == 2 and report["n"] == 6
    assert normalise_answer("  Yes,\tplease ") == "yes please"
    with pytest.raises(InputError, match="2 predictions but 6 questions"):
        evaluate_understanding(predictions[:2], qa)
    with pytest.raises(InputError, match="cannot read an answer"):
        evaluate_understanding(["x"], [{"question": "?"}])
