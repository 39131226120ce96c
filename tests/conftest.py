"""Suite-wide test settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    """One intra-op thread for the whole suite.

    The models here are tiny, so a second thread gains little, and on a shared
    2-core machine two threads fighting another process make torch many times
    slower than one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
