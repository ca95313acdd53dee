"""``unimm demo``: a Gradio page to chat about images and generate pictures with any unimm model.

Two tabs over one loaded model (:class:`Loaded`):

* **Chat**: a multi-turn conversation about one or more uploaded images, answered by :class:`unimm.chat.Chat`
  (the same history, context budget and dropping of old turns as ``unimm chat``); temperature, top-p, max tokens,
  seed; a clear button.
* **Generate** (only for models with a generation path): a prompt, the number of images, one field per sampling
  option the path declares (``model.generator.sample_options``: guidance, temperature, top-k, top-p for VQ;
  guidance and steps for flow), starting where ``unimm generate`` starts with no flags (the config's ``sample:``
  section, ``GenerationPath.configured_sample_options``, else the path's own values; 0 turns top-k / top-p off); the images
  (B, 3, H, W) in [-1, 1] from ``model.generate_images`` go to a gallery as PNGs of the path's ``image_size``.

The handlers are plain functions of this module (:func:`chat_turn`, :func:`generate`), so tests call them without a
browser; in the page they are wired by :func:`build_demo` under the API names ``/chat`` and ``/generate`` (for
``gradio_client``). A bad input (no image, an unreadable or too large image, an empty or too long prompt, a value
out of range) raises :class:`gradio.Error` carrying the library's one-line :class:`~unimm.registry.InputError`
message, which Gradio shows in the page; the server goes on. Requests are queued one at a time: the model is
shared and a CPU gains nothing from running two samplings at once.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..chat import Chat, Exchange
from ..registry import InputError, UnimmError
from .model_info import describe

#: Most images one Generate request may ask for (the slider's end).
MAX_IMAGES = 8
#: Largest upload Gradio accepts (it refuses bigger files in the page); decoding is bounded by ``load_image`` too.
MAX_UPLOAD = "20mb"
_MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed
#: System fonts only: Gradio's default theme fetches Google Fonts, which an offline machine cannot reach.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


@dataclass
class Loaded:
    """A model with what the handlers need: ``model``, ``processor`` and the resolved config ``cfg``."""

    model: Any
    processor: Any
    cfg: Any


def shown_in_page(handler):
    """Turn the library's :class:`UnimmError` into :class:`gradio.Error` (the same one line, shown in the page)."""
    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except UnimmError as err:
            raise gr.Error(str(err), print_exception=False) from None
    return wrapped


def _check_number(name: str, value: Any, least: float, most: float, *, integer: bool = False,
                  above: bool = False) -> Any:
    """``value`` if it is a number in [least, most] (``above``: > least); else an InputError naming the field."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}: give a number, got {value!r}")
    if integer:
        if value != int(value):
            raise InputError(f"{name} = {value}: must be a whole number")
        value = int(value)
    if value < least or (above and value == least) or value > most:
        low = f"> {least}" if above else f">= {least}"
        raise InputError(f"{name} = {value}: must be {low} and <= {most}")
    return value


# -- chat ------------------------------------------------------------------------------------------------------
@shown_in_page
def chat_turn(loaded: Loaded, message: dict | str | None, messages: list[dict], exchanges: list[Exchange],
              temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 128, seed: int = 0,
              ) -> tuple[list[dict], list[Exchange], None]:
    """Answer one user turn in the conversation so far.

    Args:
        message: the Chat box's value, ``{"text": str, "files": [image path, ...]}`` (or just the text).
        messages: the chatbot's shown messages (``{"role", "content"}`` dicts); ``exchanges``: the conversation
            as :class:`unimm.chat.Exchange` records (texts, PIL images, answers), kept in the session.

    Returns:
        (shown messages with the turn and its answer, the exchanges the model now remembers, None to empty the box).

    Raises:
        gradio.Error: empty text, no image in the conversation, an unreadable image, a value out of range, or a
            turn too long for the model's context.
    """
    from ..encoders.transforms import load_image

    message = {"text": message} if isinstance(message, str) or message is None else message
    text, files = (message.get("text") or "").strip(), list(message.get("files") or [])
    if not text:
        raise InputError("the message is empty: type a question about the image(s)")
    if not files and not any(exchange.images for exchange in exchanges):
        raise InputError("no image: attach one or more images to your message (the paperclip or drag and drop) "
                         "to ask about them")
    temperature = _check_number("temperature", temperature, 0, 100)
    top_p = _check_number("top-p", top_p, 0, 1, above=True)
    max_new_tokens = _check_number("max tokens", max_new_tokens, 1, 1_000_000, integer=True)
    seed = _check_number("seed", seed, 0, _MAX_SEED, integer=True)
    paths = [f if isinstance(f, str) else f["path"] for f in files]  # gradio_client / the page send paths
    images = [load_image(path) for path in paths]
    notes = io.StringIO()
    try:
        chat = Chat(loaded.model, loaded.processor, max_new_tokens=max_new_tokens, out=io.StringIO(), err=notes,
                    temperature=temperature, top_p=top_p, seed=seed)
    except InputError as err:  # Chat names the command's flag; the page calls it "max tokens"
        raise InputError(str(err).replace("--max-new-tokens", "max tokens")) from None
    chat.history, chat.pending = list(exchanges), images
    answer = chat.ask(text)
    notices = [line.removeprefix("unimm: ") for line in notes.getvalue().splitlines()]
    if answer is None:  # the turn alone does not fit: Chat said why and kept the history
        raise InputError(notices[-1].replace("(--max-new-tokens)", "(max tokens)"))
    for notice in notices:  # old turns dropped to make room
        gr.Warning(notice)
    shown = list(messages) + [{"role": "user", "content": {"path": path}} for path in paths]
    shown += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    return shown, chat.history, None


def clear_chat() -> tuple[list, list, None]:
    """An empty conversation: no shown messages, nothing remembered, an empty box."""
    return [], [], None


# -- generate --------------------------------------------------------------------------------------------------
def default_sample_options(loaded: Loaded) -> dict[str, Any]:
    """Each declared option's starting value: the config's ``sample:`` section over the path's own default, the
    values ``unimm generate`` uses when no flag is given (``GenerationPath.configured_sample_options``).

    A flow path's ``guidance`` and ``num_steps`` start at the path's own settings
    (``GenerationPath.default_sample_options``), which is what sampling then uses: a page field must show a number,
    as a browser cannot send an empty one.
    """
    path = loaded.model.generator
    return {**path.default_sample_options(), **path.configured_sample_options(loaded.cfg.get("sample"))}


@shown_in_page
def generate(loaded: Loaded, prompt: str | None, num_images: int = 1, seed: int = 0,
             options: dict[str, Any] | None = None, progress: bool = False) -> list:
    """Draw ``num_images`` pictures of ``prompt``.

    Args:
        options: sampling option name -> value from the page (None: the default); each is checked against the
            generation path's declared options.
        progress: show the sampler's tqdm bar (the page's progress bar follows it).

    Returns:
        ``num_images`` PIL images of the path's ``image_size``.

    Raises:
        gradio.Error: no generation path, an empty or too long prompt, or a number or option out of range.
    """
    from ..images import to_pil

    model, processor = loaded.model, loaded.processor
    if model.generator is None:
        raise InputError("this model has no generation path (model.generator is empty); it can only chat")
    prompt = (prompt or "").strip()
    if not prompt:
        raise InputError("the prompt is empty: describe the picture to draw")
    num_images = _check_number("number of images", num_images, 1, MAX_IMAGES, integer=True)
    seed = _check_number("seed", seed, 0, _MAX_SEED, integer=True)
    chosen = default_sample_options(loaded)
    given = model.generator.check_sample_options(options or {})  # unknown names and bad values, by name
    chosen.update(given)
    chosen = {name: value for name, value in chosen.items() if value is not None}
    prompt_ids, prompt_mask = processor.generation_prompts([prompt] * num_images)
    images = model.generate_images(prompt_ids, prompt_mask, pad_id=processor.pad_id, seed=seed, progress=progress,
                                   **chosen)
    return to_pil(images)


# -- the page --------------------------------------------------------------------------------------------------
def format_parameters(count: int) -> str:
    """``1234567`` -> ``"1.23 M"`` (B above a billion, K below a million)."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return str(count)


def header_markdown(info: dict) -> str:
    """The page's header: the model's name and size, then its parts (from :func:`model_info.describe`)."""
    parts = ", ".join(f"{slot} `{part['type']}` ({format_parameters(part['parameters'])})"
                      for slot, part in info["parts"].items())
    generation = info["generation"]
    if generation:
        side = generation["image_size"]
        makes = f"draws {side}x{side} images with `{generation['type']}`"
    else:
        makes = "has no generation path (chat only)"
    return (f"# unimm demo: {info['name']}\n{format_parameters(info['parameters'])} parameters; {makes}.  \n"
            f"Parts: {parts}.")


def _zero_is_off(option) -> bool:
    """An optional option (top_k, top_p) for which 0 is not a valid value: its field's 0 means "not set" (a
    browser's number field cannot send an empty value)."""
    return option.optional and option.min is not None and (option.min > 0 or option.min_exclusive and option.min == 0)


def option_value(option, value: Any) -> Any:
    """A field's value -> the option's value: 0 -> None (off) where :func:`_zero_is_off`; others as they are."""
    return None if value == 0 and _zero_is_off(option) else value


def _option_field(name: str, option, default: Any):
    """A Gradio input for one declared sampling option (its type, default and help). Ranges are left to the
    library's check, so an out-of-range value gets the same message as on the command line."""
    label = name.replace("_", " ")
    if option.type is bool:
        return gr.Checkbox(value=bool(default), label=label, info=option.help)
    if _zero_is_off(option):
        label, default = f"{label} (0 = off)", 0 if default is None else default
    return gr.Number(value=default, label=label, info=option.help, precision=0 if option.type is int else None)


def build_demo(loaded: Loaded, seed: int = 0) -> gr.Blocks:
    """The Gradio app for ``loaded`` (not launched): Chat tab, and Generate tab when the model has a generation
    path. Stable ``elem_id``s for browsers: ``prompt``, ``generate-button``, ``gallery``, ``chat-input``, ``chatbot``.
    """
    info = describe(loaded.model, loaded.processor, loaded.cfg)
    limit = loaded.processor.max_length or loaded.model.backbone.max_positions or 2048
    with gr.Blocks(title=f"unimm demo: {info['name']}", analytics_enabled=False) as demo:
        gr.Markdown(header_markdown(info), elem_id="header")
        with gr.Tab("Chat"):
            chatbot = gr.Chatbot(label="conversation", elem_id="chatbot", height=360)
            remembered = gr.State([])
            box = gr.MultimodalTextbox(placeholder="Attach image(s) and ask about them", file_types=["image"],
                                       file_count="multiple", elem_id="chat-input", show_label=False)
            with gr.Row():
                temperature = gr.Slider(0, 2, value=0.0, step=0.05, label="temperature", info="0 = greedy")
                top_p = gr.Slider(0.05, 1, value=1.0, step=0.05, label="top-p")
                max_tokens = gr.Slider(1, max(1, min(1024, limit // 2)), value=min(128, limit // 2), step=1,
                                       label="max tokens")
                chat_seed = gr.Number(value=seed, precision=0, label="seed")
            clear = gr.Button("Clear", elem_id="clear-button")

            def on_chat(message, messages, exchanges, temperature, top_p, max_tokens, turn_seed):
                return chat_turn(loaded, message, messages, exchanges, temperature, top_p, max_tokens, turn_seed)

            box.submit(on_chat, [box, chatbot, remembered, temperature, top_p, max_tokens, chat_seed],
                       [chatbot, remembered, box], api_name="chat")
            clear.click(clear_chat, None, [chatbot, remembered, box], api_name="clear")
        if loaded.model.generator is not None:
            path = loaded.model.generator
            with gr.Tab("Generate"):
                prompt = gr.Textbox(label="prompt", placeholder="what to draw", elem_id="prompt")
                with gr.Row():
                    count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="number of images")
                    gen_seed = gr.Number(value=seed, precision=0, label="seed")
                defaults = default_sample_options(loaded)
                with gr.Row():
                    fields = [_option_field(name, option, defaults[name])
                              for name, option in path.sample_options.items()]
                button = gr.Button("Generate", variant="primary", elem_id="generate-button")
                gallery = gr.Gallery(label="images", elem_id="gallery", columns=4, format="png",
                                     buttons=["download", "fullscreen"])
                on_generate = _generate_handler(loaded)
                gr.on([button.click, prompt.submit], on_generate, [prompt, count, gen_seed, *fields], gallery,
                      api_name="generate")
    return demo.queue(default_concurrency_limit=1)


def _generate_handler(loaded: Loaded):
    """The Generate button's function: (prompt, count, seed, one value per declared option, progress) -> images.

    The options are known only at run time, but Gradio finds its progress tracker by the function's signature
    (a ``*values`` parameter shifts it onto an option), so the handler gets an explicit ``__signature__``.
    """
    import inspect

    options = loaded.model.generator.sample_options
    names = list(options)

    def on_generate(prompt, count, seed, *rest):
        *values, progress = rest
        progress(0, desc="sampling")  # the sampler's tqdm bar then drives it (track_tqdm)
        given = {name: option_value(options[name], value) for name, value in zip(names, values)}
        return generate(loaded, prompt, count, seed, given, progress=True)

    plain = inspect.Parameter.POSITIONAL_OR_KEYWORD
    on_generate.__signature__ = inspect.Signature(
        [inspect.Parameter(name, plain) for name in ("prompt", "count", "seed", *names)]
        + [inspect.Parameter("progress", plain, default=gr.Progress(track_tqdm=True))])
    return on_generate


def launch(loaded: Loaded, host: str = "127.0.0.1", port: int = 7860, seed: int = 0, block: bool = True):
    """Build and serve the demo on ``host:port``; returns the (launched) Blocks. ``block=False`` returns at once."""
    demo = build_demo(loaded, seed=seed)
    demo.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_UPLOAD, theme=THEME,
                prevent_thread_lock=not block, quiet=not block)
    return demo


def check_address(host: str, port: int) -> None:
    """``host:port`` can be listened on (checked before the model loads, so a typo costs nothing).

    Raises:
        InputError: naming ``--port`` (out of range, in use) or ``--host`` (unknown, not this machine's).
    """
    import errno
    import socket

    if not 1 <= port <= 65535:
        raise InputError(f"--port = {port}: must be in 1..65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise InputError(f"--host {host}: unknown host ({err.strerror}); use 127.0.0.1, or 0.0.0.0 for every "
                         "interface") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise InputError(f"--port {port}: already in use on {host}; pick another, e.g. --port {port + 1}"
                                 ) from None
            raise InputError(f"--host {host}: cannot listen there ({err.strerror}); use 127.0.0.1, or 0.0.0.0 for "
                             "every interface") from None
