"""``attnbench`` command line: report, oom, gate, history, variants, precompile, merge, run, cp, crosscheck."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnbench", description="attention benchmark tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from . import cp, crosscheck, gate, history, launch, merge, oom, precompile, report, variants

    report.add_arguments(sub.add_parser("report", help="markdown tables (and plots) from a saved run"))
    oom.add_arguments(sub.add_parser("oom", help="largest seq_len that fits, per variant, on a GPU"))
    gate.add_arguments(sub.add_parser("gate", help="compare two saved runs: exit 1 on a regression"))
    history.add_arguments(sub.add_parser("history", help="every cell's figures over commits, and where steps began "
                                                         "(HTML page, markdown)"))
    variants.add_arguments(sub.add_parser("variants", help="the registered variants as a markdown table"))
    precompile.add_arguments(sub.add_parser("precompile", help="compile triton_flash's kernels for a grid (GPU)"))
    merge.add_arguments(sub.add_parser("merge", help="merge the runs of a grid's shards into one run"))
    launch.add_arguments(sub.add_parser("run", help="run the suite in shards, one pytest process per GPU, and merge"))
    cp.add_arguments(sub.add_parser("cp", help="ring attention across GPUs (torchrun): time, memory, comm, efficiency"))
    crosscheck.add_arguments(sub.add_parser("crosscheck", help="a saved run's medians against triton.testing.do_bench "
                                                               "on this GPU"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as given, for a command that relaunches itself (cp --nproc)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
