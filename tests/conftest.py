import os

os.environ.setdefault("PRUNEDATA_NO_PROGRESS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def fmnist_small():
    """2000 real Fashion-MNIST training samples (class-stratified), shared by tests."""
    from prunedata.datasets import FashionMNIST

    return FashionMNIST(train=True, max_samples=2000)
