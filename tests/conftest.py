"""Shared fixtures: tiny random models (built once per session from configs) and the real
models that install from the package registry."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models have nothing to parallelise; one thread avoids OpenMP stalls on a busy CPU."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_dir(tiny_root):
    """tiny_dir("clip" | "gemma3" | "bert" | "sd" | "sdxl") -> folder of a tiny random model."""
    from geomkit import tiny

    return lambda kind: tiny.cached_dir(kind, str(tiny_root))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_dir):
    """tiny_encoder("clip" | "gemma3" | "bert", encoder=1) -> Encoder (pipelines: "sd", "sdxl")."""
    from geomkit.models import load_encoder

    return lambda kind, encoder=1: load_encoder(str(tiny_dir(kind)), encoder=encoder)


@pytest.fixture(scope="session")
def gemma():
    """The real Gemma 3 270M (Q4_K_M de-quantised), converted once and cached."""
    from geomkit.models import load_encoder

    return load_encoder("gemma3-270m")


@pytest.fixture(scope="session")
def minilm():
    from geomkit.models import load_encoder

    return load_encoder("minilm-l6")
