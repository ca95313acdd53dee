"""Putting a loaded model in front of people: the Gradio demo (:mod:`unimm.serving.demo`, ``unimm demo``) and
what it shows about a model (:mod:`unimm.serving.model_info`)."""
