"""Shared test settings: CPU, few threads, deterministic seeds."""
import os
import warnings

import pytest
import torch

torch.set_num_threads(int(os.environ.get('SRDL_TEST_THREADS', '2')))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')
