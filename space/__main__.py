"""Describe presets: ``python -m space [NAME ...] [--json]``.

Prints each preset's layout, parameters and MACs (fvcore, attention included) next to the
published figures; ``--json`` prints the genotype itself.
"""

from __future__ import annotations

import argparse
import sys

from space import count, presets


def describe(name: str) -> str:
    arch = presets.get(name)
    cost = count(arch)
    published = presets.PUBLISHED[name]
    paper_macs = "-" if published.macs is None else f"{published.macs / 1e9:.2f}G"
    stages = " | ".join(
        f"{s.block} x{s.depth} w{s.width} h{s.heads} r{s.ratio_label}" for s in arch.stages
    )
    return (
        f"{name}: {arch.resolution}px, stem {arch.stem} {arch.stem_width}, head {arch.head}\n"
        f"  stages: {stages}\n"
        f"  params {cost.params / 1e6:.2f}M (published {published.params / 1e6:.2f}M), "
        f"MACs {cost.macs / 1e9:.3f}G (published {paper_macs}; {published.source})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m space", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(presets.names()))
    parser.add_argument("--json", action="store_true", help="print the genotype as JSON")
    args = parser.parse_args(argv)
    for name in args.names or presets.names():
        try:
            print(presets.get(name).to_json(indent=2) if args.json else describe(name))
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
