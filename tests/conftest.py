"""Test settings: no network, a private Hugging Face cache, small deterministic runs.

Layout: the tests mirror the package (tests/paths, tests/objectives, tests/samplers, tests/kernels, tests/checkpoints,
tests/zoo, with tests/data, tests/cli, tests/benchmarks, tests/rewards for the data modules, the command line, the
benchmark scripts and the rewards). pytest's default (prepend) import mode imports each test module by its basename
with its folder on sys.path, and puts this folder there too, so shared code lives in ``tests/helpers.py``
(``from helpers import ...``) or in fixtures of a conftest.py; tests never import each other. The folders have no
__init__.py on purpose: tests/kernels/__init__.py would make tests/kernels the top-level ``kernels`` package
and shadow the Hub's, and a tests/__init__.py would put the repository root on sys.path (see below); the
importlib mode, which would allow them, cannot pickle the test-module functions that torch.multiprocessing.spawn
runs (tests/zoo/test_metrics.py). Test module basenames must therefore be unique across the folders (pytest
refuses a duplicate with "import file mismatch").
"""

import os
import sys
import tempfile
from pathlib import Path

# The repository's folders (kernels/, paths/, ...) are flowzoo.kernels, flowzoo.paths, ... once installed; with the
# root on sys.path (`python -m pytest` from it) they would shadow packages of the same name, e.g. the Hub's `kernels`
# that transformers imports. Drop the root here, and keep it off the path of the subprocesses tests start.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _ROOT]
os.environ["PYTHONSAFEPATH"] = "1"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(tempfile.gettempdir(), "flowzoo-test-hf-home"))
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


# Lightning's seed_everything leaves the seed in the environment, where flowzoo's ResumableSampler reads it as the
# data order of every later fit in the process: a test's `--seed_everything=N` would change another test's models.
LIGHTNING_SEED_VARIABLES = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors (``pytestmark = pytest.mark.usefixtures("one_thread")``): a
    second thread only waits for the other core (the CI box has two, shared)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    for name in LIGHTNING_SEED_VARIABLES:
        os.environ.pop(name, None)
    yield
    for name in LIGHTNING_SEED_VARIABLES:  # before the next module's fixtures are built
        os.environ.pop(name, None)
