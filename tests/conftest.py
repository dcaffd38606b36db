"""Shared test settings: CPU, few threads, deterministic seeds."""
import os
import warnings

import pytest
import torch

# One intra-op thread by default: tiny models run fastest that way, results are bit-reproducible across runs
# and processes, and OpenMP threads do not spin against each other on a busy 2-core machine.
torch.set_num_threads(int(os.environ.get('SRDL_TEST_THREADS', '1')))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
