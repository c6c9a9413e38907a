import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _env_path(var, what):
    p = os.environ.get(var)
    if not p or not Path(p).exists():
        pytest.skip(f"{what} not available: set {var} (.ci/run points it at ../shared)")
    return Path(p)


@pytest.fixture
def celeba_root():
    return _env_path("CELEBA_ROOT", "CelebA subset")


@pytest.fixture
def inception_weights():
    return _env_path("INCEPTION_WEIGHTS", "FID Inception weights")


def tiny_args(tmp_path, *extra):
    """CLI arguments of a tiny, fast run on the bundled digits."""
    return ["--data", "digits", "--ngf", "8", "--ndf", "8", "--nz", "8", "--batch-size", "32",
            "--num-samples", "16", "--no-progress", "--cache-dir", "", "--threads", "1", "--out", str(tmp_path), *extra]
