"""Serving a unimm model: the HTTP API (``unimm serve``, :mod:`unimm.serving.api`), the request batcher
(:mod:`unimm.serving.batcher`) and the model description both the API and the demo show
(:mod:`unimm.serving.model_info`)."""
