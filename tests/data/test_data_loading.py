"""Training data: manifests with broken entries, image preparation, task mixing, caption dropout, resuming."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unimm.data import (
    GenerationImageTransform, JsonlSource, MixtureLoader, SourceStream, TaskSampler, build_streams,
    load_record_image,
)
from unimm.backbones.base import positions_from_mask
from unimm.data.records import SkipRecord
from unimm.registry import ConfigError

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


@pytest.fixture(scope="module")
def processor():
    """The real processor of the tiny Janus case (tokenizer + understanding transform)."""
    import unimm

    return unimm.load_pretrained(GOLDEN / "janus_tiny").processor


def _png(path: Path, color=(200, 20, 20), size=(24, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), color, np.uint8)).save(path)


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _conv(answer: str, tag: bool = True) -> list[dict]:
    return [{"role": "user", "content": ("<image>\n" if tag else "") + "What is it?"},
            {"role": "assistant", "content": answer}]


def _drain(loader: MixtureLoader, n: int) -> list:
    return [loader.next_batch() for _ in range(n)]


# -- bad records ---------------------------------------------------------------------------------------------
def test_broken_generation_manifest_is_skipped_and_counted_per_reason(tmp_path, processor):
    _png(tmp_path / "img" / "good.png")
    (tmp_path / "img" / "garbage.png").write_bytes(b"this is not a png")
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, format="PNG")
    (tmp_path / "img" / "truncated.png").write_bytes(buf.getvalue()[:60])
    manifest = _write_jsonl(tmp_path / "t2i.jsonl", [
        {"image": "img/good.png", "caption": "a red box"},
        {"image": "img/missing.png", "caption": "gone"},
        {"image": "img/garbage.png", "caption": "garbage bytes"},
        {"image": "img/truncated.png", "caption": "cut short"},
        {"image": "img/good.png", "caption": "   "},
        '{"image": "img/good.png", "caption": ',  # malformed JSON
        {"caption": "no image field"},
    ])
    streams = {"t2i": SourceStream(JsonlSource(manifest, "generation"), "t2i", seed=0, shuffle=False)}
    loader = MixtureLoader(streams, TaskSampler({"t2i": 1}, 0), processor, batch_size=2,
                           generation_image_size=16, num_threads=2)
    batch = loader.next_batch()  # needs two good samples: the only good record, then a second pass over the file
    assert batch.task == "generation" and batch.inputs["images"].shape == (2, 3, 16, 16)
    assert dict(loader.skips.counts) == {
        "missing_image": 1, "corrupt_image": 2, "empty_caption": 1, "malformed_json": 1, "bad_fields": 1,
    }
    assert "skipped 6 records" in loader.skips.report()


def test_understanding_records_too_long_or_mismatched_are_skipped(tmp_path, processor):
    _png(tmp_path / "a.png")
    manifest = _write_jsonl(tmp_path / "und.jsonl", [
        {"image": "a.png", "conversations": _conv("short answer")},
        {"image": "a.png", "conversations": _conv(" ".join(["word"] * 400))},  # over-long
        {"images": ["a.png", "a.png"], "conversations": _conv("two images, one tag")},
        {"image": "a.png", "conversations": [{"role": "user", "content": "<image>\nno answer"}]},
        {"image": "a.png", "conversations": _conv("tag added for a single image", tag=False)},
    ])
    streams = {"und": SourceStream(JsonlSource(manifest, "understanding"), "und", seed=0, shuffle=False)}
    loader = MixtureLoader(streams, TaskSampler({"und": 1}, 0), processor, batch_size=2, max_length=200,
                           num_threads=1)
    batch = loader.next_batch()
    assert batch.size == 2 and batch.inputs["input_ids"].shape[1] <= 200
    assert dict(loader.skips.counts) == {"too_long": 1, "bad_fields": 2}
    labels = batch.inputs["labels"]
    # Only answer tokens carry labels: the decoded labelled tokens are the answers.
    answers = [processor.tokenizer.decode(row[row != -100]) for row in labels]
    assert "answer" in answers[0] and "single image" in answers[1]
    assert not any("What is it" in a for a in answers)


def test_a_source_with_only_bad_records_fails_with_its_name(tmp_path, processor):
    manifest = _write_jsonl(tmp_path / "t2i.jsonl", [{"image": "nope.png", "caption": "x"}])
    streams = {"t2i": SourceStream(JsonlSource(manifest, "generation"), "t2i", seed=0)}
    loader = MixtureLoader(streams, TaskSampler({"t2i": 1}, 0), processor, batch_size=1,
                           generation_image_size=8, max_skips_in_a_row=20, num_threads=1)
    with pytest.raises(Exception, match="source 't2i': 20 bad records in a row"):
        loader.next_batch()


# -- images ---------------------------------------------------------------------------------------------------
def test_generation_transform_resizes_the_short_side_and_crops_the_centre():
    stripes = np.zeros((10, 30, 3), np.uint8)
    stripes[:, :10] = (255, 0, 0)
    stripes[:, 10:20] = (0, 255, 0)
    stripes[:, 20:] = (0, 0, 255)
    out = GenerationImageTransform(10)(Image.fromarray(stripes))
    assert out.shape == (3, 10, 10)
    torch.testing.assert_close(out[:, 2:-2, 2:-2].mean(dim=(1, 2)), torch.tensor([-1.0, 1.0, -1.0]),
                               atol=0.02, rtol=0)
    tall = GenerationImageTransform(8)(Image.new("RGB", (16, 40), (255, 255, 255)))
    assert tall.shape == (3, 8, 8) and tall.min() >= -1 and tall.max() <= 1


def test_record_image_skip_reasons(tmp_path):
    with pytest.raises(SkipRecord) as missing:
        load_record_image(tmp_path / "none.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(SkipRecord) as corrupt:
        load_record_image(tmp_path / "bad.jpg")
    with pytest.raises(SkipRecord) as corrupt_bytes:
        load_record_image(b"not an image")
    assert (missing.value.reason, corrupt.value.reason, corrupt_bytes.value.reason) == (
        "missing_image", "corrupt_image", "corrupt_image")


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (6, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.info["transparency"] = 0  # palette entry 0 is transparent
    return image


def _rgba() -> Image.Image:
    image = Image.new("RGBA", (6, 4), (10, 20, 30, 255))
    image.putpixel((0, 0), (90, 0, 0, 0))  # a transparent pixel that hides a dark red
    return image


@pytest.mark.parametrize("make, suffix, corner, inside", [
    (_rgba, "png", (255, 255, 255), (10, 20, 30)),  # transparency composited onto white, one way everywhere
    (_palette_with_transparency, "png", (255, 255, 255), (200, 100, 50)),
    (lambda: Image.new("L", (6, 4), 100), "png", (100, 100, 100), (100, 100, 100)),
    (lambda: Image.fromarray(np.full((4, 6), 40000, np.uint16)), "png", (156, 156, 156), (156, 156, 156)),  # 16-bit
    (lambda: Image.new("CMYK", (6, 4), (0, 0, 0, 0)), "jpg", (255, 255, 255), (255, 255, 255)),
], ids=["RGBA", "palette-transparent", "greyscale", "16-bit", "CMYK"])
def test_training_and_inference_read_image_files_the_same_way(tmp_path, processor, make, suffix, corner, inside):
    """A file reads to the same RGB pixels through the data loader (path or shard bytes) and the inference loader."""
    from unimm.encoders.transforms import load_image

    path = tmp_path / f"picture.{suffix}"
    make().save(path)
    inference = load_image(path)
    assert inference.mode == "RGB"
    assert inference.getpixel((0, 0)) == corner and inference.getpixel((3, 2)) == inside
    for training in (load_record_image(path), load_record_image(path.read_bytes())):
        assert training.mode == "RGB" and list(training.getdata()) == list(inference.getdata())
    # and the processor's understanding transform of the record image is the one of the file itself
    transform = processor.image_transform
    torch.testing.assert_close(transform(load_record_image(path)), transform(str(path)), rtol=0, atol=0)


# -- mixing ---------------------------------------------------------------------------------------------------
def test_task_sampler_follows_the_ratios_and_is_a_function_of_seed_and_index():
    sampler = TaskSampler({"und": 5, "text": 1, "t2i": 4}, seed=3)
    draws = [sampler.choose(i) for i in range(20000)]
    freq = Counter(draws)
    for name, expected in {"und": 0.5, "text": 0.1, "t2i": 0.4}.items():
        assert abs(freq[name] / len(draws) - expected) < 0.015, (name, freq)
    again = TaskSampler({"und": 5, "text": 1, "t2i": 4}, seed=3)
    assert [again.choose(i) for i in range(15000, 15100)] == draws[15000:15100]  # resumable from any index
    other = TaskSampler({"und": 5, "text": 1, "t2i": 4}, seed=4)
    assert [other.choose(i) for i in range(100)] != draws[:100]
    assert set(TaskSampler({"a": 1, "b": 0}, 0).names) == {"a"}
    with pytest.raises(ConfigError, match="ratios must be numbers >= 0"):
        TaskSampler({"a": -1}, 0)


def test_processes_read_disjoint_records_and_cover_an_epoch(tmp_path):
    manifest = _write_jsonl(tmp_path / "text.jsonl", [{"text": f"line {i}"} for i in range(10)])
    source = JsonlSource(manifest, "text")
    seen = []
    for rank in range(2):
        stream = SourceStream(source, "text", seed=7, rank=rank, world_size=2)
        seen.append([stream.next_record()[1].text for _ in range(5)])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(f"line {i}" for i in range(10))
    assert seen[0] != [f"line {i}" for i in range(0, 10, 2)]  # shuffled


def _uncond_path(kind: str):
    """The generation path of the tiny Janus or JanusFlow model, for its unconditional prompt."""
    import unimm

    return unimm.build_model("janus_tiny" if kind == "vq" else "janusflow_tiny").generator


def test_caption_dropout_rate_and_determinism(tmp_path, processor):
    _png(tmp_path / "a.png")
    manifest = _write_jsonl(tmp_path / "t2i.jsonl", [{"image": "a.png", "caption": f"cap {i}"} for i in range(50)])
    path = _uncond_path("vq")

    def dropped(p: float, seed: int) -> list[bool]:
        streams = {"t2i": SourceStream(JsonlSource(manifest, "generation"), "t2i", seed=seed)}
        loader = MixtureLoader(streams, TaskSampler({"t2i": 1}, seed), processor, batch_size=1,
                               generation_image_size=8, caption_dropout={"t2i": p}, seed=seed, num_threads=1,
                               unconditional_prompt=path.unconditional_prompt)
        out = []
        for _ in range(400):
            stream = loader.streams["t2i"]
            _, record = stream.next_record()
            out.append(loader._prepare("t2i", "generation", stream.position - 1, record)["dropped"])
        return out

    rate = sum(dropped(0.3, 0)) / 400
    assert 0.23 < rate < 0.37
    assert dropped(0.3, 0) == dropped(0.3, 0) != dropped(0.3, 1)
    assert not any(dropped(0.0, 0))


@pytest.mark.parametrize("kind", ["vq", "flow"])
def test_a_dropped_caption_trains_the_prompt_the_sampler_guides_with(tmp_path, processor, kind):
    """Caption dropout writes the path's own unconditional prompt (Janus: text padded, still attended; JanusFlow:
    masked), keeping the conditional prompt's positions, as sampling builds its guidance rows."""
    _png(tmp_path / "a.png")
    captions = ["a red circle above a blue square", "a cat"]
    manifest = _write_jsonl(tmp_path / "t2i.jsonl", [{"image": "a.png", "caption": c} for c in captions])
    path = _uncond_path(kind)
    streams = {"t2i": SourceStream(JsonlSource(manifest, "generation"), "t2i", seed=0, shuffle=False)}
    loader = MixtureLoader(streams, TaskSampler({"t2i": 1}, 0), processor, batch_size=2, generation_image_size=8,
                           caption_dropout={"t2i": 0.5}, num_threads=1, unconditional_prompt=path.unconditional_prompt)
    ids, mask = processor.generation_prompts(captions)
    uncond_ids, uncond_mask = path.unconditional_prompt(ids, mask, processor.pad_id)
    assert not torch.equal(uncond_ids, ids)
    seen = set()
    for _ in range(12):
        batch = loader.next_batch().inputs
        assert torch.equal(batch["prompt_positions"], positions_from_mask(mask))
        for row in range(2):
            got = (batch["prompt_ids"][row], batch["prompt_mask"][row])
            if torch.equal(got[0], ids[row]):
                assert torch.equal(got[1], mask[row])
                seen.add((row, "cond"))
            else:
                assert torch.equal(got[0], uncond_ids[row]) and torch.equal(got[1], uncond_mask[row])
                seen.add((row, "uncond"))
    assert len(seen) == 4  # both forms of both rows came up


def test_caption_dropout_without_an_unconditional_prompt_is_refused(tmp_path, processor):
    manifest = _write_jsonl(tmp_path / "t2i.jsonl", [{"image": "a.png", "caption": "a cat"}])
    streams = {"t2i": SourceStream(JsonlSource(manifest, "generation"), "t2i", seed=0)}
    with pytest.raises(ConfigError, match="caption dropout needs a generation path"):
        MixtureLoader(streams, TaskSampler({"t2i": 1}, 0), processor, batch_size=1, caption_dropout={"t2i": 0.1})
    # a source the mixture never draws (weight 0) needs no unconditional prompt
    und = _write_jsonl(tmp_path / "und.jsonl", [{"image": "a.png", "conversations": _conv("ans")}])
    streams["und"] = SourceStream(JsonlSource(und, "understanding"), "und", seed=0)
    MixtureLoader(streams, TaskSampler({"und": 1, "t2i": 0}, 0), processor, batch_size=1, caption_dropout={"t2i": 0.1})


def test_loader_state_resumes_the_same_batches(tmp_path, processor):
    _png(tmp_path / "a.png")
    und = _write_jsonl(tmp_path / "und.jsonl", [{"image": "a.png", "conversations": _conv(f"ans {i}")}
                                                for i in range(7)])
    text = _write_jsonl(tmp_path / "text.jsonl", [{"text": f"text {i}"} for i in range(5)])
    sources = {"und": {"task": "understanding", "jsonl": str(und)}, "text": {"task": "text", "jsonl": str(text)}}

    def make() -> MixtureLoader:
        return MixtureLoader(build_streams(sources, seed=1), TaskSampler({"und": 1, "text": 1}, 1), processor,
                             batch_size=2, num_threads=1)

    first = make()
    _drain(first, 5)
    state = json.loads(json.dumps(first.state_dict()))
    expected = _drain(first, 6)
    resumed = make()
    resumed.load_state_dict(state)
    got = _drain(resumed, 6)
    assert [b.source for b in got] == [b.source for b in expected]
    for a, b in zip(got, expected):
        assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"])


def test_source_config_errors(tmp_path):
    manifest = _write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError, match=r"jsonll: unknown key\. Did you mean 'jsonl'\?"):
        build_streams({"text": {"task": "text", "jsonll": str(manifest)}}, seed=0)
    with pytest.raises(ConfigError, match="task must be one of"):
        build_streams({"text": {"task": "captions", "jsonl": str(manifest)}}, seed=0)
    with pytest.raises(ConfigError, match="does not exist"):
        build_streams({"text": {"task": "text", "jsonl": str(tmp_path / "nope.jsonl")}}, seed=0)
    streams = build_streams({"text": {"task": "text", "jsonl": str(manifest)}}, seed=0)
    with pytest.raises(ConfigError, match=r"Did you mean 'text'\? Sources: text"):
        MixtureLoader(streams, TaskSampler({"txt": 1}, 0), processor=None, batch_size=1)


# -- WebDataset shards -----------------------------------------------------------------------------------------
def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _shards(folder: Path, n_shards: int, per_shard: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), (9, 99, 199)).save(buf, format="PNG")
    for s in range(n_shards):
        with tarfile.open(folder / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:03d}{i:04d}"
                _add(tar, f"{key}.png", buf.getvalue() if i != 1 else b"corrupt")
                if i != 2:
                    _add(tar, f"{key}.txt", f"caption {key}".encode())
    return str(folder / f"shard-{{000..{n_shards - 1:03d}}}.tar")


def test_webdataset_shards_split_by_process_skip_bad_samples_and_resume(tmp_path, processor):
    pytest.importorskip("webdataset")
    from unimm.data.webdataset import WebDatasetStream

    pattern = _shards(tmp_path, n_shards=2, per_shard=4)
    keys = []
    for rank in range(2):
        stream = WebDatasetStream(pattern, "generation", "t2i", seed=0, rank=rank, world_size=2)
        items = [stream.next_record()[1] for _ in range(4)]
        keys.append({r.key.split(":")[-1] for r in items if not isinstance(r, SkipRecord)})
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 6  # two samples without a caption

    streams = {"t2i": WebDatasetStream(pattern, "generation", "t2i", seed=0)}
    loader = MixtureLoader(streams, TaskSampler({"t2i": 1}, 0), processor, batch_size=3,
                           generation_image_size=8, num_threads=1)
    first = loader.next_batch()
    assert first.inputs["images"].shape == (3, 3, 8, 8)
    assert dict(loader.skips.counts) == {"corrupt_image": 1, "empty_caption": 1}
    state = loader.state_dict()
    expected = loader.next_batch().inputs["prompt_ids"]
    again = MixtureLoader({"t2i": WebDatasetStream(pattern, "generation", "t2i", seed=0)},
                          TaskSampler({"t2i": 1}, 0), processor, batch_size=3, generation_image_size=8, num_threads=1)
    again.load_state_dict(state)
    assert torch.equal(again.next_batch().inputs["prompt_ids"], expected)
