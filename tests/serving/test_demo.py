"""The demo's handlers called directly, then through gradio_client against the launched page, then `unimm demo`'s
bad flags. Each answer and image is compared with what the library gives for the same request (unimm chat's
:class:`~unimm.chat.Chat`, ``model.generate_images`` with unimm generate's defaults), so the demo cannot drift."""

from __future__ import annotations

import io
import socket
import time

import gradio as gr
import pytest
import torch
from PIL import Image

from unimm.chat import Chat
from unimm.cli import main
from unimm.images import to_pil
from unimm.model import UnifiedModel
from unimm.serving.demo import (Loaded, build_demo, chat_turn, clear_chat, default_sample_options, generate,
                               header_markdown)
from unimm.serving.model_info import describe


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    red, blue = folder / "red.png", folder / "blue.png"
    Image.new("RGB", (40, 30), (220, 30, 30)).save(red)
    Image.new("RGB", (32, 32), (20, 40, 200)).save(blue)
    (folder / "notes.png").write_text("not an image")
    return folder


def reference_answers(loaded, turns, **sampling):
    """What ``unimm chat`` answers to ``turns`` [(text, [image paths])...]."""
    chat = Chat(loaded.model, loaded.processor, out=io.StringIO(), err=io.StringIO(), **sampling)
    answers = []
    for text, paths in turns:
        chat.pending = [Image.open(p).convert("RGB") for p in paths]
        answers.append(chat.ask(text))
    return answers


def test_chat_turns_answer_as_unimm_chat_does(loaded, pictures):
    red, blue = str(pictures / "red.png"), str(pictures / "blue.png")
    shown, remembered, box = chat_turn(loaded, {"text": "what colour is the shape?", "files": [red]}, [], [])
    assert box is None and len(remembered) == 1 and len(remembered[0].images) == 1
    assert shown[0] == {"role": "user", "content": {"path": red}}
    # the second turn sees the first (its image stays in the conversation) and adds a second image
    shown, remembered, _ = chat_turn(loaded, {"text": "and this one?", "files": [blue]}, shown, remembered,
                                     0.0, 1.0, 32, 0)
    expected = reference_answers(loaded, [("what colour is the shape?", [red]), ("and this one?", [blue])],
                                 max_new_tokens=32, temperature=0.0, top_p=1.0, seed=0)
    assert [e.answer for e in remembered] == expected
    assert [m["content"] for m in shown if m["role"] == "assistant"] == expected
    assert clear_chat() == ([], [], None)


def test_sampled_chat_follows_the_seed(loaded, pictures):
    message = {"text": "what is in the image?", "files": [str(pictures / "red.png")]}
    answers = [chat_turn(loaded, message, [], [], 1.5, 0.9, 12, seed)[1][0].answer for seed in (1, 1)]
    assert answers[0] == answers[1] == reference_answers(
        loaded, [(message["text"], message["files"])], max_new_tokens=12, temperature=1.5, top_p=0.9, seed=1)[0]


def test_generate_draws_what_the_library_draws(loaded):
    options = default_sample_options(loaded)
    assert options == {"guidance": 2.0, "temperature": 0.7, "top_k": None, "top_p": None,  # the config's sample:
                       "compile": False}
    images = generate(loaded, "a red circle", 2, 7, {"top_k": 20, "top_p": None})
    ids, mask = loaded.processor.generation_prompts(["a red circle"] * 2)
    expected = to_pil(loaded.model.generate_images(ids, mask, pad_id=loaded.processor.pad_id, seed=7,
                                                   guidance=2.0, temperature=0.7, top_k=20))
    assert [im.size for im in images] == [(32, 32)] * 2
    assert [im.tobytes() for im in images] == [im.tobytes() for im in expected]


def test_old_turns_dropped_to_fit_are_a_warning_in_the_page(loaded, pictures):
    red, blue = str(pictures / "red.png"), str(pictures / "blue.png")  # each turn is about 40 tokens; the
    # 256 positions less 200 kept for the answer leave room for one
    _, remembered, _ = chat_turn(loaded, {"text": "what colour is it?", "files": [red]}, [], [], 0.0, 1.0, 200, 0)
    with pytest.warns(UserWarning, match=r"dropped the oldest 1 turn\(s\) to stay within the model's 256 positions"):
        shown, remembered, _ = chat_turn(loaded, {"text": "and this one?", "files": [blue]}, [], remembered,
                                         0.0, 1.0, 200, 0)
    assert [e.text for e in remembered] == ["and this one?"]  # answered without the first turn
    assert shown[-1]["content"] == reference_answers(loaded, [("and this one?", [blue])], max_new_tokens=200)[0]


BAD_CHAT = [  # (message, extra arguments, the message shown in the page)
    ({"text": "  ", "files": ["{red}"]}, (), "the message is empty"),
    ({"text": "what is it?", "files": []}, (), "no image: attach one or more images"),
    ({"text": "what is it?", "files": ["{pictures}/notes.png"]}, (), "cannot read image"),
    ({"text": "what is it?", "files": ["{pictures}/gone.png"]}, (), "image file not found"),
    ({"text": "what is it?", "files": ["{red}"]}, (-1.0, 1.0, 16, 0), "temperature = -1.0: must be >= 0"),
    ({"text": "what is it?", "files": ["{red}"]}, (0.0, 0.0, 16, 0), "top-p = 0.0: must be > 0"),
    ({"text": "what is it?", "files": ["{red}"]}, (0.0, 1.0, 0, 0), "max tokens = 0: must be >= 1"),
    ({"text": "what is it?", "files": ["{red}"]}, (0.0, 1.0, 16, -3), "seed = -3: must be >= 0"),
    ({"text": "what is it?", "files": ["{red}"]}, (0.0, 1.0, 300, 0),
     "max tokens = 300 leaves no room for the conversation"),
    ({"text": "why " * 200, "files": ["{red}"]}, (0.0, 1.0, 16, 0), "so a turn may use 240: shorten it"),
]


@pytest.mark.parametrize("message, extra, expected", BAD_CHAT, ids=[c[2].split(":")[0] for c in BAD_CHAT])
def test_bad_chat_input_shows_the_library_message(loaded, pictures, message, extra, expected):
    files = [f.format(red=pictures / "red.png", pictures=pictures) for f in message["files"]]
    with pytest.raises(gr.Error, match=expected.replace("(", r"\(")):
        chat_turn(loaded, {"text": message["text"], "files": files}, [], [], *extra)


def test_a_huge_image_is_refused(loaded, pictures, monkeypatch):
    from unimm.encoders import transforms

    monkeypatch.setattr(transforms, "MAX_DECODE_PIXELS", 32 * 32)  # the 40x30 PNG is "huge" here
    with pytest.raises(gr.Error, match=r"red.png is 40x30 pixels, more than the .* unimm decodes"):
        chat_turn(loaded, {"text": "what is it?", "files": [str(pictures / "red.png")]}, [], [])


BAD_GENERATE = [  # (prompt, number of images, seed, options, the message shown in the page)
    ("", 1, 0, {}, "the prompt is empty"),
    ("a red circle " * 70, 1, 0, {},
     "the prompt \\(218 tokens\\) and the image \\(64 tokens\\) exceed the backbone's 256"),
    ("a red circle " * 90, 1, 0, {}, "the prompt is 278 tokens long but the model allows 256"),
    ("a red circle", 0, 0, {}, "number of images = 0: must be >= 1"),
    ("a red circle", 9, 0, {}, "number of images = 9: must be >= 1 and <= 8"),
    ("a red circle", 1, 2**64, {}, "seed = 18446744073709551616: must be >= 0 and <= 18446744073709551615"),
    ("a red circle", 1, 0, {"top_k": 0}, "top_k = 0: must be >= 1"),
    ("a red circle", 1, 0, {"guidance": -2.0}, "guidance = -2.0: must be >= 0.0"),
    ("a red circle", 1, 0, {"num_steps": 10}, "num_steps: the VQGenerationPath does not take this sampling option"),
]


@pytest.mark.parametrize("prompt, count, seed, options, expected", BAD_GENERATE,
                         ids=[c[4].split(":")[0][:30] for c in BAD_GENERATE])
def test_bad_generate_input_shows_the_library_message(loaded, prompt, count, seed, options, expected):
    with pytest.raises(gr.Error, match=expected):
        generate(loaded, prompt, count, seed, options)


def api_names(demo: gr.Blocks) -> set[str]:
    return {fn.api_name for fn in demo.fns.values() if fn.api_name}


def tab_labels(demo: gr.Blocks) -> set[str]:
    return {block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)}


def test_a_model_without_generation_path_has_no_generate_tab(loaded):
    model = loaded.model
    chat_only = Loaded(UnifiedModel(model.und_encoder, model.und_aligner, model.backbone, None), loaded.processor,
                       loaded.cfg)
    demo = build_demo(chat_only)
    assert api_names(demo) == {"chat", "clear"}
    assert "Generate" not in tab_labels(demo)
    assert "has no generation path (chat only)" in header_markdown(describe(chat_only.model, loaded.processor, None))
    with pytest.raises(gr.Error, match="no generation path"):
        generate(chat_only, "a red circle", 1, 0, {})
    full = build_demo(loaded)
    assert api_names(full) == {"chat", "clear", "generate"} and tab_labels(full) == {"Chat", "Generate"}
    assert all(fn.queue for fn in full.fns.values()) and full._queue.default_concurrency_limit == 1  # one at a time


def test_the_header_names_the_model_its_parts_and_size(loaded):
    header = header_markdown(describe(loaded.model, loaded.processor, loaded.cfg))
    assert header.startswith("# unimm demo: shapes-janus\n1.53 M parameters; draws 32x32 images with "
                             "`VQGenerationPath`")
    for part in ("und_encoder `SigLIPEncoder` (114 K)", "backbone `CausalLMBackbone` (962 K)",
                 "generator `VQGenerationPath` (430 K)"):
        assert part in header


# -- through gradio_client, against the page served on a free port -------------------------------------------------
def test_gradio_client_generates_and_chats(loaded, demo_url, pictures):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(demo_url, verbose=False)
    gallery = client.predict("a blue square", 2, 5, 1.0, 1.0, 0, 0, api_name="/generate")  # top-k, top-p 0: off
    drawn = [Image.open(item["image"]) for item in gallery]
    assert [im.size for im in drawn] == [(32, 32)] * 2
    expected = generate(loaded, "a blue square", 2, 5, {"guidance": 1.0, "temperature": 1.0})
    assert [im.convert("RGB").tobytes() for im in drawn] == [im.tobytes() for im in expected]  # PNG: lossless

    red = str(pictures / "red.png")
    shown, box = client.predict({"text": "what colour is the shape?", "files": [handle_file(red)]}, [], 0.0, 1.0, 16, 0,
                           api_name="/chat")
    answer = reference_answers(loaded, [("what colour is the shape?", [red])], max_new_tokens=16, temperature=0.0,
                               top_p=1.0, seed=0)[0]
    assert shown[0]["content"][0]["type"] == "file" and shown[1]["content"][0]["text"] == "what colour is the shape?"
    assert shown[-1]["role"] == "assistant" and shown[-1]["content"][0]["text"] == answer
    assert box == {"text": "", "files": []}  # the message box is emptied for the next turn

    with pytest.raises(AppError, match="the prompt is empty"):
        client.predict("", 1, 0, 1.0, 1.0, None, None, api_name="/generate")
    client.predict({"text": "and now?", "files": []}, [], 0.0, 1.0, 16, 0, api_name="/chat")  # the image is
    client.predict(api_name="/clear")  # remembered in this session until cleared
    with pytest.raises(AppError, match="no image: attach"):
        client.predict({"text": "what is it?", "files": []}, [], 0.0, 1.0, 16, 0, api_name="/chat")
    job = client.submit("a red circle", 8, 0, 1.0, 1.0, 0, 0, api_name="/generate")  # the server is still up
    progress = set()
    while not job.done():  # the page's progress bar: the sampler's steps (64 image tokens, about a second here)
        progress |= {(unit.desc, unit.length) for unit in job.status().progress_data or ()}
        time.sleep(0.01)
    assert len(job.result()) == 8 and ("image tokens", 64) in progress
    assert torch.is_grad_enabled()  # the handlers leave the process as they found it


# -- unimm demo's flags ---------------------------------------------------------------------------------------------
def test_bad_demo_flags_give_one_line_and_status_2(capsys):
    with socket.socket() as busy, socket.socket() as spare:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spare.bind(("127.0.0.1", 0))
        free = spare.getsockname()[1]
        spare.close()  # a port nothing listens on, so the model case reaches the loading
        cases = [
            (["--port", "0"], "--port = 0: must be in 1..65535"),
            (["--port", "70000"], "--port = 70000: must be in 1..65535"),
            (["--port", str(port)], f"--port {port}: already in use on 127.0.0.1; pick another"),
            (["--host", "no-such-host.invalid"], "--host no-such-host.invalid: unknown host"),
            (["--host", "192.0.2.1"], "--host 192.0.2.1: cannot listen there"),  # TEST-NET: not this machine
            (["--seed", "-1"], "--seed = -1: must be at least 0"),
            (["--device", "tpu"], "--device"),
            (["--model", "/no/such/model", "--port", str(free)], "/no/such/model"),
        ]
        for flags, expected in cases:
            assert main(["demo", *flags]) == 2, flags
            err = capsys.readouterr().err
            assert err.startswith("unimm: error: ") and expected in err and err.count("\n") == 1, (flags, err)


def test_a_flow_model_gets_its_own_options():
    """JanusFlow's path declares guidance and steps (no defaults of its own: they are the path's attributes)."""
    from unimm.build import build_model, build_processor
    from unimm.config import load_config

    cfg = load_config("janusflow_tiny", [])
    model = build_model(cfg).eval()
    flow = Loaded(model, build_processor(cfg, model), cfg)
    path = model.generator
    assert default_sample_options(flow) == {"guidance": path.guidance, "num_steps": path.num_steps}
    demo = build_demo(flow)
    fields = [block for block in demo.blocks.values() if isinstance(block, gr.Number) and block.label != "seed"]
    assert [(f.label, f.value) for f in fields] == [("guidance", path.guidance), ("num steps", path.num_steps)]
    images = generate(flow, "a cat", 1, 3, {"num_steps": 2})
    ids, mask = flow.processor.generation_prompts(["a cat"])
    expected = to_pil(model.generate_images(ids, mask, pad_id=flow.processor.pad_id, seed=3, num_steps=2))
    assert images[0].size == (path.image_size,) * 2 and images[0].tobytes() == expected[0].tobytes()
    with pytest.raises(gr.Error, match="top_k: the RectifiedFlowPath does not take this sampling option"):
        generate(flow, "a cat", 1, 0, {"top_k": 5})
