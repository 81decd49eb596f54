"""Run small CPU linear algebra on one thread.

Tiny matmuls and SVDs gain nothing from a second thread, and on a busy 2-core machine the
threads' synchronisation was measured to make them 20-100x slower (e.g. 64 spectral norms of
384-wide matrices: 95 s on 2 threads under load, well under a second on one)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def single_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
