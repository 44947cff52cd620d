"""Check a strategy against one process: `python -m companion.parallel --strategy ddp`.

Example: `python -m companion.parallel --strategy ddp --world-size 2 --steps 5`.

Prints the per-step losses of every rank beside the single-process run and exits 1 on a mismatch.
Introduced in chapter 9.
"""
from __future__ import annotations

import argparse
import sys

from .verify import verify
from .wrap import STRATEGIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m companion.parallel", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--strategy", required=True, choices=[s for s in STRATEGIES if s != "none"])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--microbatches", type=int, default=4, help="pipeline only")
    parser.add_argument(
        "--schedule", choices=["gpipe", "1f1b"], default="1f1b", help="pipeline only"
    )
    parser.add_argument(
        "--tp-method", choices=["hand", "dtensor"], default="hand", help="tensor parallelism only"
    )
    # for the tests: must fail
    parser.add_argument("--inject-fault", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.world_size < 1 or args.steps < 1:
        parser.error(f"--world-size and --steps must be positive, got {args.world_size} and "
                     f"{args.steps}")
    report = verify(args.strategy, args.world_size, args.steps, n_microbatches=args.microbatches,
                    schedule=args.schedule, tp_method=args.tp_method,
                    inject_fault=args.inject_fault)
    if args.strategy == "fsdp":
        ref, mine = report["reference"]["bytes"], report["results"][0]["bytes"]
        print(f"rank 0 holds {mine['param']:,} parameter bytes and {mine['optim']:,} optimizer "
              f"bytes; one process holds {ref['param']:,} and {ref['optim']:,}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
