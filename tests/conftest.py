"""Every test starts with the process's default number of CPU threads (the 2-process tests lower it)."""

import pytest
import torch

THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _default_threads():
    yield
    torch.set_num_threads(THREADS)
