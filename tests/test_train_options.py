"""Parsing a training spec, and checking a run's arguments, answer from simulate.train.options
without starting JAX (each in a fresh interpreter, where nothing has imported it yet)."""

import subprocess
import sys
from pathlib import Path

from simulate.train.options import EXTRA_MODULES, missing_modules

REPO = Path(__file__).resolve().parents[1]


def imports_jax(code: str) -> bool:
    """Whether ``code``, run in a fresh interpreter at the repository root, leaves jax imported."""
    probe = f"{code}\nimport sys\nprint('jax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stdout.split()[-1] == "True"


def test_parsing_a_training_spec_does_not_import_jax():
    code = (
        "from simulate.spec import parse\n"
        "spec, _ = parse(['specs/train_fmnist.toml', '--optimizer', 'sgd', '--schedule', 'cosine'])\n"
        "assert (spec.optimizer, spec.schedule) == ('sgd', 'cosine')"
    )
    assert not imports_jax(code)


def test_checking_a_runs_arguments_does_not_import_jax():
    code = (
        "import pytest\n"
        "from simulate.activations import Activation\n"
        "from simulate.train.run import _check_run_args\n"
        "act = Activation.relu()\n"
        "_check_run_args(act, 1.0, 3, 8, 1, 1e-3, 'sgd', 'cosine', 0.0, 4)\n"
        "with pytest.raises(ValueError, match='^optimizer='):\n"
        "    _check_run_args(act, 1.0, 3, 8, 1, 1e-3, 'adamw', 'cosine', 0.0, 4)"
    )
    assert not imports_jax(code)


def test_missing_modules_names_an_extra_module_that_cannot_be_imported(monkeypatch):
    assert missing_modules() == []  # the test environment has the [train] extra
    monkeypatch.setitem(sys.modules, EXTRA_MODULES[-1], None)  # import fails as if not installed
    assert missing_modules() == [EXTRA_MODULES[-1]]
