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


# ----------------------------------------------------------------------------------------------------------------
# fixtures shared by the tests of several modules (each test module gets its own copy: scope='module')
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def csv_root(tmp_path_factory):
    """srdl-train tests' data: a tiny CSV data set (8 training / 6 validation images, 3 classes); its folder."""
    from fixtures_data import write_train_csv
    return write_train_csv(tmp_path_factory.mktemp('csvdata'))


@pytest.fixture(scope='module')
def source():
    """Publishing tests' model: srdl_test_resnet with 3 named classes, non-default hyper-parameters (HUB_HPARAMS)
    and perturbed weights, in eval mode."""
    from fixtures_data import toy_srdl_model
    torch.manual_seed(0)
    return toy_srdl_model()


@pytest.fixture(scope='module')
def x():
    """Publishing tests' input batch: 2 images of HUB_IMG px, from a fixed seed."""
    from fixtures_data import HUB_IMG
    return torch.randn(2, 3, HUB_IMG, HUB_IMG, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope='module')
def published(source, tmp_path_factory):
    """``source`` published by hub.save_pretrained_dir with HUB_REPORT's metrics: (folder, PublishResult)."""
    from fixtures_data import HUB_REPORT
    from srdl_timm import hub
    folder = tmp_path_factory.mktemp('pub') / 'srdl_test_resnet.toy'
    result = hub.save_pretrained_dir(source, folder, repo_id='srdl-test/srdl_test_resnet.toy', metrics=HUB_REPORT,
                                     dataset='toy-csv', recipe='srdl-train --model srdl_test_resnet --epochs 1')
    return folder, result
