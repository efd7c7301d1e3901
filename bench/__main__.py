"""``python -m bench [--quick] [NAME ...]``: run benchmarks and print their table.

Run from the project root. Progress goes to stderr, the table to stdout as
Markdown, ready for docs/benchmarks.md. A private RabbitMQ node is started
for the run (6 to 9 s) and stopped at its end.
"""

from __future__ import annotations

import argparse
import logging
import sys

from bench import Benchmark, discover
from bench.harness import BenchError, Outcome, context, describe_machine, format_table
from eventbus.errors import EventBusError
from eventbus.queue.rabbitmq_node import NodeError

logger = logging.getLogger("bench")


def main(argv: list[str] | None = None) -> int:
    benchmarks = discover()
    parser = _parser(benchmarks)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(benchmarks))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}; there are: {', '.join(benchmarks)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.list:
        for benchmark in benchmarks.values():
            print(f"{benchmark.name:12} {benchmark.description}")
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # eventbus reports pika's failures in its own words
    try:
        results = _run([benchmarks[name] for name in dict.fromkeys(args.names or benchmarks)], args)
    except (BenchError, NodeError, EventBusError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Machine: {describe_machine()}{' (--quick: figures not meaningful)' if args.quick else ''}\n")
    print(format_table(results))
    return 0


def _parser(benchmarks: dict[str, Benchmark]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run, by default all: {', '.join(benchmarks)}")
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test, the figures mean little")
    parser.add_argument("--repeats", type=int, help="timed runs per case (default 5, 1 with --quick)")
    parser.add_argument("--amqp-url", help="use this broker instead of starting a private RabbitMQ node")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    return parser


def _run(selected: list[Benchmark], args: argparse.Namespace) -> list[Outcome]:
    """Run the benchmarks in one context (one RabbitMQ node), logging each result as it comes."""
    results: list[Outcome] = []
    with context(quick=args.quick, repeats=args.repeats, amqp_url=args.amqp_url) as ctx:
        for benchmark in selected:
            logger.info("%s: %s", benchmark.name, benchmark.description)
            for result in benchmark.run(ctx):
                logger.info("  %s", result.summary)
                results.append(result)
    return results


if __name__ == "__main__":
    sys.exit(main())
