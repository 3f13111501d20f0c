"""Shared test setup."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the tests run tiny tensors on a shared 2-core machine, where
    torch's thread pool only adds spin-wait (measured 5-30x slower with 2 threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
