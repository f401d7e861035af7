"""Root conftest: loads the attnbench pytest plugin (options, fixtures, machine info); nothing else."""

pytest_plugins = ["attnbench.plugin"]
