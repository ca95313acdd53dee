"""``unimm serve``'s app on the shipped model, through FastAPI's TestClient: every endpoint, every bad input (a 4xx
JSON error naming the field), batching (a request's images are the same batched or alone) and a model with no
generation path."""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from unimm.pretrained import DEFAULT_MODEL, load_pretrained
from unimm.serving.api import create_app


@pytest.fixture(scope="module")
def loaded():
    return load_pretrained(DEFAULT_MODEL, device="cpu", dtype="float32")


def _client(loaded, **limits) -> TestClient:
    model, processor, cfg = loaded
    return TestClient(create_app(model, processor, cfg, **limits))


@pytest.fixture(scope="module")
def client(loaded):
    with _client(loaded, max_images=3, max_upload_bytes=20_000) as c:
        yield c


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


RED = _png(Image.new("RGB", (40, 30), "red"))
NOISE = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)))  # ~43 kB


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


# -- endpoints ---------------------------------------------------------------------------------------------------
def test_health(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_model_describes_parts_path_and_options(client, loaded):
    info = client.get("/v1/model").json()
    model = loaded.model
    assert info["name"] == "shapes-janus"
    assert info["parts"]["backbone"] == {"type": "CausalLMBackbone",
                                         "parameters": sum(p.numel() for p in model.backbone.parameters())}
    assert set(info["parts"]) == {"und_encoder", "und_aligner", "backbone", "generator"}
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    generation = info["generation"]
    assert generation["type"] == "VQGenerationPath" and generation["image_size"] == 32
    assert set(generation["options"]) == set(model.generator.sample_options)
    assert generation["options"]["top_k"] == {**generation["options"]["top_k"], "type": "int", "min": 1,
                                              "optional": True}
    assert generation["options"]["guidance"]["default"] == 2.0  # the config's sample: value
    assert info["limits"] == {"max_batch": 8, "max_images": 3, "max_upload_bytes": 20_000}


def test_understand_answers_like_the_model(client, loaded):
    from unimm.answers import question_conversation

    model, processor, _ = loaded
    question = "What shape is in the image?"
    answer = client.post("/v1/understand", json={"image": RED, "question": question, "max_new_tokens": 8}).json()
    batch = processor(question_conversation(question), [Image.open(io.BytesIO(base64.b64decode(RED)))])
    expected = processor.decode(model.generate_text(batch, max_new_tokens=8, eos_id=processor.eos_id,
                                                    pad_id=processor.pad_id)[0]).strip()
    assert answer == {"answer": expected} and expected
    two = client.post("/v1/understand", json={"image": [RED, "data:image/png;base64," + RED], "question": question})
    assert two.status_code == 200 and isinstance(two.json()["answer"], str)


def test_generate_gives_pngs_with_per_image_seeds(client, loaded):
    model, processor, cfg = loaded
    out = client.post("/v1/generate", json={"prompt": "a red circle", "num_images": 2, "seed": 5}).json()
    assert out["seeds"] == [5, 6]
    images = [_pixels(b64) for b64 in out["images"]]
    assert all(image.shape == (32, 32, 3) for image in images)
    ids, mask = processor.generation_prompts(["a red circle"] * 2)
    # the server samples with the model's own settings (config.yaml's sample:)
    expected = model.generate_images(ids, mask, pad_id=processor.pad_id, seed=[5, 6], **cfg.sample)
    expected = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert all(np.array_equal(image, want) for image, want in zip(images, expected))
    greedy = client.post("/v1/generate", json={"prompt": "a red circle", "temperature": 0, "top_k": 3}).json()
    assert not np.array_equal(_pixels(greedy["images"][0]), images[0])  # the options reach the path


# -- batching ----------------------------------------------------------------------------------------------------
def _concurrently(client, bodies: list[dict]) -> list[dict]:
    results: list = [None] * len(bodies)

    def post(i):
        results[i] = client.post("/v1/generate", json=bodies[i]).json()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_requests_are_batched_and_equal_each_alone(loaded):
    bodies = [{"prompt": "a red circle", "num_images": 2, "seed": 1},
              {"prompt": "a blue square on the left of a green triangle", "seed": 9}]
    with _client(loaded, window=1.0) as together:  # a long window: both requests land in one call
        batched = _concurrently(together, bodies)
        assert together.app.state.batcher.calls == [(together.app.state.batcher.calls[0][0], 3)]
    with _client(loaded, window=0) as alone:
        singles = [alone.post("/v1/generate", json=body).json() for body in bodies]
        assert [rows for _, rows in alone.app.state.batcher.calls] == [2, 1]
    assert batched == singles


def test_max_batch_splits_rows_and_keeps_the_images(loaded, client):
    body = {"prompt": "a red circle", "num_images": 3, "seed": 4}
    with _client(loaded, max_batch=2, window=0) as small:
        split = small.post("/v1/generate", json=body).json()
        assert [rows for _, rows in small.app.state.batcher.calls] == [2, 1]
    assert split == client.post("/v1/generate", json=body).json()


def test_requests_with_other_options_are_not_batched_together(loaded):
    bodies = [{"prompt": "a red circle", "seed": 1}, {"prompt": "a red circle", "seed": 1, "temperature": 0.5}]
    with _client(loaded, window=1.0) as c:
        first, second = _concurrently(c, bodies)
        assert sorted(rows for _, rows in c.app.state.batcher.calls) == [1, 1]
    assert first != second


# -- bad input ---------------------------------------------------------------------------------------------------
LONG_PROMPT = "red circle " * 100  # 208 tokens: within the processor's 256, but not with the image's 64 positions

BAD_GENERATE = [
    ({"prompt": "x", "guidanse": 2.0}, 422, "guidanse", "Did you mean 'guidance'?"),
    ({"prompt": "x", "top_k": 0}, 422, "top_k", "top_k = 0: must be >= 1"),
    ({"prompt": "x", "temperature": "hot"}, 422, "temperature", "expected float, got str"),
    ({"prompt": "x", "num_steps": 3}, 422, "num_steps", "does not take this sampling option"),
    ({"prompt": LONG_PROMPT}, 422, "prompt", "exceed the backbone's 256 positions"),
    ({"prompt": "x " * 400}, 422, "prompt", "tokens long but the model allows 256"),
    ({"prompt": ""}, 422, "prompt", "at least 1 character"),
    ({"num_images": 1}, 422, "prompt", "Field required"),
    ({"prompt": "x", "num_images": 4}, 422, "num_images", "at most 3 per request (--max-images)"),
    ({"prompt": "x", "num_images": 0}, 422, "num_images", "greater than or equal to 1"),
    ({"prompt": "x", "seed": -1}, 422, "seed", "greater than or equal to 0"),
]
BAD_UNDERSTAND = [
    ({"image": "not base64!", "question": "q"}, 422, "image", "not valid base64"),
    ({"image": base64.b64encode(b"hello there").decode(), "question": "q"}, 422, "image", "not an image file"),
    ({"image": [RED, "@@"], "question": "q"}, 422, "image[1]", "not valid base64"),
    ({"image": [RED, 7], "question": "q"}, 422, "image[1]", "must be a base64 string"),
    ({"image": [], "question": "q"}, 422, "image", "non-empty list"),
    ({"image": [RED] * 4, "question": "q"}, 422, "image", "4 images; this server takes at most 3"),
    ({"image": NOISE, "question": "q"}, 413, "image", "images up to 20000 bytes (--max-upload-mb)"),
    ({"image": RED, "question": "   "}, 422, "question", "non-empty string"),
    ({"image": RED}, 422, "question", "Field required"),
    ({"image": RED, "question": "why? " * 300}, 422, "question", "the model allows 256"),
    ({"image": RED, "question": "q", "max_new_tokens": 0}, 422, "max_new_tokens", "greater than or equal to 1"),
    ({"image": RED, "question": "q", "temperature": -1}, 422, "temperature", "greater than or equal to 0"),
    ({"image": RED, "question": "q", "colour": "red"}, 422, "colour", "not a field of this request"),
]


@pytest.mark.parametrize(("endpoint", "body", "status", "field", "fragment"),
                         [("/v1/generate", *case) for case in BAD_GENERATE]
                         + [("/v1/understand", *case) for case in BAD_UNDERSTAND],
                         ids=[f"generate-{c[2]}-{i}" for i, c in enumerate(BAD_GENERATE)]
                         + [f"understand-{c[2]}-{i}" for i, c in enumerate(BAD_UNDERSTAND)])  # fmt: skip
def test_bad_input_is_a_4xx_naming_the_field(client, endpoint, body, status, field, fragment):
    response = client.post(endpoint, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field and error["detail"].startswith(field) and fragment in error["detail"]


def test_body_that_is_not_json_or_too_big(client):
    response = client.post("/v1/generate", content=b"{prompt", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["field"] == "body"
    assert "not valid JSON" in response.json()["detail"]
    response = client.post("/v1/understand", content=b"x" * 200_000, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["field"] == "body"
    assert "--max-images, --max-upload-mb" in response.json()["detail"]


def test_a_model_without_generation_path(loaded):
    model, processor, cfg = load_pretrained(DEFAULT_MODEL, device="cpu", dtype="float32")
    model.generator = None
    with TestClient(create_app(model, processor, cfg)) as c:
        assert c.get("/v1/model").json()["generation"] is None
        response = c.post("/v1/generate", json={"prompt": "a red circle"})
        assert response.status_code == 409
        assert "no generation path" in response.json()["detail"] and "/v1/understand" in response.json()["detail"]
        assert c.post("/v1/understand", json={"image": RED, "question": "What shape?"}).status_code == 200


def test_the_event_loop_stays_free_while_the_model_works(loaded, monkeypatch):
    import time

    model = loaded.model
    original = model.generate_images

    def slow(*args, **kwargs):
        time.sleep(1.5)  # blocks its thread, as a long sampling call does
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate_images", slow)
    with _client(loaded, window=0) as c:
        worker = threading.Thread(target=lambda: c.post("/v1/generate", json={"prompt": "a red circle"}))
        worker.start()
        time.sleep(0.3)  # the sampling call is under way
        start = time.monotonic()
        assert c.get("/health").status_code == 200 and c.get("/v1/model").status_code == 200
        answered = time.monotonic() - start
        still_sampling = worker.is_alive()
        worker.join()
    assert still_sampling and answered < 1.0
