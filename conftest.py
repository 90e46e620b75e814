# Our own test suite drives the plugin the way users do: through pytester.
import os

pytest_plugins = ["pytester"]

# No test reaches the model hub: tiny models are built offline. huggingface_hub reads this when it
# is imported, so it must be set before the imports below.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# pytester's in-process runs remove every module a run imported; torch and numpy cannot be
# imported a second time in one process, so load them before any run starts.
import numpy  # noqa: E402,F401
import torch  # noqa: E402,F401
import transformers  # noqa: E402,F401
