"""A JSON API for a unimm model: ``unimm serve`` (FastAPI on uvicorn).

Endpoints (README "Serve an API" has curl examples):

* ``GET /health`` -> ``{"status": "ok"}``
* ``GET /v1/model`` -> :func:`unimm.serving.model_info.describe` plus the server's ``limits``
* ``POST /v1/understand`` ``{"image": base64 or [base64, ...], "question", "max_new_tokens", "temperature",
  "top_k", "top_p", "seed"}`` -> ``{"answer"}``
* ``POST /v1/generate`` ``{"prompt", "num_images", "seed", ...the generation path's sampling options}`` ->
  ``{"images": [base64 PNG, ...], "seeds": [...]}``; image ``j`` of a request is drawn with ``seed + j``.

Every bad input is a 4xx JSON ``{"detail": "<field>: what is wrong", "field": "<field>"}``: 422 for a bad value
(bad base64, not an image, too many images, an option the path does not take or out of its range, a prompt too
long for the context, an empty question), 413 for an upload over ``max_upload_bytes``, 409 for ``/v1/generate`` on
a model without a generation path. unimm's own :class:`~unimm.registry.UnimmError` messages are the text.

Threads: the tokenizer and image transforms run on one worker thread, the model on another (torch is not
re-entrant for one model, and transformers' fast tokenizers must not be used from two threads at once); the event
loop only parses and waits. Concurrent ``/v1/generate`` requests are batched by :class:`~unimm.serving.batcher.
Batcher`, up to ``max_batch`` images a call, grouped by identical sampling options, each image with its own seed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ..registry import InputError, UnimmError
from .batcher import Batcher
from .model_info import describe

MAX_SEED = 2**62  # torch's manual_seed takes 64-bit seeds; image j of a request uses seed + j


class FieldError(Exception):
    """A bad value in a request: answered as ``status`` with ``{"detail": "<field>: <message>", "field"}``."""

    def __init__(self, field: str | None, message: str, status: int = 422):
        prefix = f"{field}: " if field and not message.startswith(field) else ""
        super().__init__(prefix + message)
        self.field, self.status = field, status


class UnderstandRequest(BaseModel):
    """``POST /v1/understand``; ``image`` and ``question`` are checked by hand for messages that name the item."""

    model_config = ConfigDict(extra="forbid")
    image: Any = Field(description="a base64 image file (PNG, JPEG, WebP; a data: URL is fine) or a list of them")
    question: Any = Field(description="what to ask about the image(s)")
    max_new_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


class GenerateRequest(BaseModel):
    """``POST /v1/generate``; any other key is a sampling option of the model's generation path (checked by it)."""

    model_config = ConfigDict(extra="allow")
    prompt: str = Field(min_length=1, description="what to draw")
    num_images: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


def create_app(model, processor, cfg=None, *, name: str | None = None, max_batch: int = 8, max_images: int = 4,
               max_upload_bytes: int = 10 * 2**20, window: float = 0.005, default_seed: int = 0) -> FastAPI:
    """The FastAPI app serving ``model`` (a :class:`~unimm.model.UnifiedModel`) with its ``processor``.

    Args:
        cfg: the model's resolved config: its ``sample:`` section gives the default sampling options.
        name: shown by ``/v1/model`` (default: the config's ``name``).
        max_batch: most images in one sampling call (1 = no batching).
        max_images: most images per request (uploaded to ``/v1/understand`` or asked of ``/v1/generate``).
        max_upload_bytes: largest decoded image file accepted.
        window: seconds an idle model waits for more requests before a call (see :mod:`unimm.serving.batcher`).
        default_seed: the seed of requests that give none.
    """
    prep = ThreadPoolExecutor(1, thread_name_prefix="unimm-prep")  # tokenizer and image transforms
    worker = ThreadPoolExecutor(1, thread_name_prefix="unimm-model")  # every model call
    path = model.generator
    defaults = path.configured_sample_options(cfg.get("sample")) if path is not None and cfg is not None else {}
    batcher = Batcher(lambda key, rows: _generate_rows(model, processor.pad_id, dict(key), rows), worker,
                      max_batch=max_batch, window=window)
    info = {**describe(model, processor, cfg, name=name),
            "limits": {"max_batch": max_batch, "max_images": max_images, "max_upload_bytes": max_upload_bytes}}
    body_limit = max_images * (max_upload_bytes * 4 // 3 + 4) + 2**16  # base64 images plus the other fields

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()
        prep.shutdown(wait=False, cancel_futures=True)
        worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=f"unimm: {info['name']}", lifespan=lifespan)
    app.state.batcher = batcher  # tests and the load benchmark read batcher.calls

    async def run(executor, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > body_limit:
            return _error(FieldError("body", f"{int(size)} bytes; this server takes requests up to {body_limit} "
                                     f"bytes ({max_images} images of {max_upload_bytes} bytes: --max-images, "
                                     "--max-upload-mb)", 413))
        return await call_next(request)

    @app.exception_handler(FieldError)
    async def field_error(request: Request, err: FieldError):
        return _error(err)

    @app.exception_handler(UnimmError)
    async def unimm_error(request: Request, err: UnimmError):
        return _error(FieldError(None, str(err)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        return _error(_from_pydantic(err.errors()))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model")
    async def model_info() -> dict:
        return info

    @app.post("/v1/understand")
    async def understand(body: UnderstandRequest) -> dict:
        files = _decode_images(body.image, max_images, max_upload_bytes)
        if not isinstance(body.question, str) or not body.question.strip():
            raise FieldError("question", f"must be a non-empty string, got {body.question!r}")
        batch = await run(prep, _understanding_batch, processor, body.question, files)
        seed = default_seed if body.seed is None else body.seed
        tokens = await run(worker, lambda: model.generate_text(
            batch, max_new_tokens=body.max_new_tokens, temperature=body.temperature, top_k=body.top_k,
            top_p=body.top_p, seed=seed, eos_id=processor.eos_id, pad_id=processor.pad_id))
        return {"answer": (await run(prep, processor.decode, tokens[0])).strip()}

    @app.post("/v1/generate")
    async def generate(body: GenerateRequest) -> dict:
        if path is None:
            raise FieldError(None, "this model has no generation path, so it cannot generate images; it answers "
                             "questions at POST /v1/understand (GET /v1/model shows \"generation\": null)", 409)
        if body.num_images > max_images:
            raise FieldError("num_images", f"{body.num_images} images asked; this server gives at most "
                             f"{max_images} per request (--max-images)")
        options = {**defaults, **_check_options(path, body.model_extra or {})}
        ids = await run(prep, _prompt_ids, model, processor, body.prompt)
        seed = default_seed if body.seed is None else body.seed
        seeds = [seed + j for j in range(body.num_images)]
        images = await batcher.submit(tuple(sorted(options.items())), [(ids, s) for s in seeds])
        return {"images": images, "seeds": seeds}

    return app


# -- request checks -----------------------------------------------------------------------------------------------
def _error(err: FieldError) -> JSONResponse:
    return JSONResponse({"detail": str(err), "field": err.field}, status_code=err.status)


def _from_pydantic(errors: list[dict]) -> FieldError:
    """pydantic's first error as a FieldError naming the field (``image[1]``, ``num_images``, ``body``)."""
    first = errors[0]
    loc = [part for part in first.get("loc", ()) if part != "body"]
    field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        return FieldError(field, "not a field of this request; see the fields in README 'Serve an API'")
    if first.get("type") == "json_invalid":
        return FieldError("body", f"not valid JSON ({first.get('ctx', {}).get('error', message)})")
    if "input" in first and first.get("type") != "missing":
        message += f", got {first['input']!r}"
    return FieldError(field or "body", message)


_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,")


def _decode_images(value: Any, max_images: int, max_bytes: int) -> list[bytes]:
    """``image``: one base64 string or a non-empty list of them -> file bytes, each checked for size."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise FieldError("image", f"must be a base64 image or a non-empty list of them, got {type(value).__name__}")
    if len(items) > max_images:
        raise FieldError("image", f"{len(items)} images; this server takes at most {max_images} per request "
                         "(--max-images)")
    files = []
    for i, item in enumerate(items):
        field = "image" if isinstance(value, str) else f"image[{i}]"
        if not isinstance(item, str):
            raise FieldError(field, f"must be a base64 string, got {type(item).__name__}")
        text = "".join(_DATA_URL.sub("", item.strip()).split())  # `base64` wraps lines; browsers send data: URLs
        if len(text) * 3 // 4 > max_bytes + 2:
            raise FieldError(field, f"about {len(text) * 3 // 4} bytes; this server takes images up to {max_bytes} "
                             "bytes (--max-upload-mb)", 413)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise FieldError(field, f"not valid base64 ({err}); send the file's bytes base64-encoded") from None
        if len(data) > max_bytes:
            raise FieldError(field, f"{len(data)} bytes; this server takes images up to {max_bytes} bytes "
                             "(--max-upload-mb)", 413)
        files.append(data)
    return files


def _understanding_batch(processor, question: str, files: list[bytes]) -> dict:
    """The processor batch for one question about ``files`` (run on the prep thread)."""
    from ..answers import question_conversation
    from ..encoders.transforms import load_image

    images = []
    for i, data in enumerate(files):
        field = "image" if len(files) == 1 else f"image[{i}]"
        try:
            images.append(load_image(data))
        except InputError as err:
            if err.__cause__ is not None:  # PIL could not read it
                raise FieldError(field, "not an image file unimm can read (PNG, JPEG, WebP, ...): "
                                 f"{type(err.__cause__).__name__}") from None
            raise FieldError(field, re.sub(r"image <_io\.BytesIO object at 0x[0-9a-f]+>", "the image",
                                           str(err))) from None
    try:
        return processor(question_conversation(question, len(images)), images)
    except InputError as err:
        raise FieldError("question", str(err)) from None


def _prompt_ids(model, processor, prompt: str) -> list[int]:
    """The prompt's token ids, checked against the processor's length and the backbone's positions."""
    try:
        ids, _ = processor.generation_prompts([prompt])
        model.check_prompt_fits(ids.shape[1])
    except InputError as err:
        raise FieldError("prompt", str(err)) from None
    return ids[0].tolist()


def _check_options(path, given: dict[str, Any]) -> dict[str, Any]:
    """The request's extra keys, each checked by the generation path (its declared sampling options)."""
    checked = {}
    for key, value in given.items():
        try:
            checked.update(path.check_sample_options({key: value}))
        except InputError as err:
            raise FieldError(key, str(err)) from None
    return checked


# -- the model call -----------------------------------------------------------------------------------------------
def _generate_rows(model, pad_id: int, options: dict, rows: list[tuple[list[int], int]]) -> list[str]:
    """One sampling call for rows of (prompt ids, seed) -> base64 PNGs, on the model thread.

    The prompts are left-padded here from their ids (the tokenizer stays on the prep thread), as
    ``Processor.generation_prompts`` pads them (:func:`unimm.processor.left_pad`).
    """
    from ..images import to_pil
    from ..processor import left_pad

    prompt_ids, prompt_mask = left_pad([ids for ids, _ in rows], pad_id)
    images = model.generate_images(prompt_ids, prompt_mask, pad_id=pad_id, seed=[s for _, s in rows], **options)
    encoded = []
    for image in to_pil(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


# -- unimm serve --------------------------------------------------------------------------------------------------
def check_serve_args(args) -> None:
    """``unimm serve``'s flags, checked before the model is loaded: limits >= 1 and a port that is free."""
    import socket

    for flag, value in (("--max-batch", args.max_batch), ("--max-images", args.max_images),
                        ("--max-upload-mb", args.max_upload_mb)):
        if not value > 0:
            raise InputError(f"{flag} {value}: must be a positive number")
    if not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: must be a port number in 1..65535")
    try:
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as err:
        raise InputError(f"--host {args.host} --port {args.port}: cannot listen there ({err.strerror or err}); "
                         "choose another --port (or --host)") from None


def run_server(model, processor, cfg, args) -> None:
    """Serve ``model`` with uvicorn on ``args.host:args.port`` until interrupted."""
    import uvicorn

    from .model_info import model_name

    app = create_app(model, processor, cfg, name=model_name(args.model, cfg), max_batch=args.max_batch,
                     max_images=args.max_images, max_upload_bytes=int(args.max_upload_mb * 2**20),
                     default_seed=args.seed)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
