"""Test-session settings and shared fixtures: no test reaches a model hub (every pretrained network loads from a
local path), and tiny-tensor tests can ask for one intra-op thread."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def single_thread():
    """One intra-op thread for tiny tensors, where threads cost far more than they save (30× measured on a busy
    2-core machine); restored afterwards so no other test runs with a changed thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
