"""Forward time of every variant on every grid cell; the cell's memory figures ride along in extra_info."""


def test_forward(benchmark, attn_runner):
    attn_runner.bench(benchmark, "forward")
