"""Root conftest: nothing heavy. The attnbench pytest plugin loads through its pytest11 entry point."""
