"""geomkit: the geometry of token embeddings in text encoders, and a DTI trainer.

Light on import: heavy libraries (torch, transformers, diffusers) load inside the functions that
need them, so `geomkit --help` stays instant. The Python API lives in the submodules:
`geomkit.models.load_encoder`, `geomkit.hooks.capture/inject`, `geomkit.geometry`, `geomkit.probes`,
`geomkit.train`.
"""

__version__ = "0.1.0"
