"""Backward time (the forward that builds the graph is untimed setup) of every variant on every grid cell."""


def test_backward(benchmark, attn_runner):
    attn_runner.bench(benchmark, "backward")
