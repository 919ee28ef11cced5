"""Shared test set-up: 8 fake CPU devices for sharding tests, quiet TensorFlow.

XLA_FLAGS must be set before jax is imported anywhere, hence at conftest import time.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import importlib.util  # noqa: E402
import sys  # noqa: E402

# torchvision (conversion and parity tests) pulls in triton, whose native library segfaults when
# loaded after TensorFlow's and JAX's: import it first, when the test extras are installed.
if importlib.util.find_spec("torchvision") is not None:
  import torchvision  # noqa: E402,F401  pylint: disable=unused-import

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
