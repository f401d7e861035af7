"""Root conftest: loads the attnbench pytest plugin (options, fixtures, machine info); nothing else heavy."""

import os

import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. The variable must be set before
# attention_impls is imported (triton.jit reads it when the kernels are decorated).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest_plugins = ["attnbench.plugin"]
