"""``posttrain recipe``: run, list or show multi-stage recipes. The runner is
:mod:`posttrain.recipes.runner`."""

from __future__ import annotations

import argparse

from posttrain.recipes.runner import RECIPES_DIR, list_recipes, run, show


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="posttrain recipe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="list the recipes that ship with posttrain")
    p_show = sub.add_parser("show", help="print a recipe with every stage's resolved options")
    p_show.add_argument("name")
    p_run = sub.add_parser("run", help="run a recipe end to end (resumable)")
    p_run.add_argument("name", help="recipe name (see `posttrain recipe list`) or a YAML file")
    p_run.add_argument("--out", required=True, help="run folder, e.g. runs/tulu3-mini")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "list":
        for recipe in list_recipes():
            first = (RECIPES_DIR / f"{recipe}.yaml").read_text().splitlines()[0].lstrip("# ")
            print(f"{recipe:12s} {first.split(':', 1)[-1].strip()}")
    elif args.action == "show":
        print(show(args.name))
    else:
        run(args.name, args.out)
    return 0
