"""``python -m croco.studies <study> [--jobs N] [--dry-run | --report-only]``: run a study's jobs that are not
done yet, then write its figures and its generated part of docs/results.md. Studies: see ``croco.studies``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from croco.studies import STUDIES
from croco.studies.common import write_section
from croco.studies.runner import StudyError, run_stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m croco.studies", description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=[*STUDIES, "all"])
    parser.add_argument("--jobs", type=int, default=1, help="jobs of a stage run at a time (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands that would run")
    parser.add_argument("--report-only", action="store_true", help="only write the figures and the docs")
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures/results"))
    args = parser.parse_args(argv)
    names = list(STUDIES) if args.study == "all" else [args.study]
    try:
        for name in names:
            study = importlib.import_module(STUDIES[name])
            if not args.report_only:
                run_stages(name, study.stages(), jobs=args.jobs, dry_run=args.dry_run)
            if not args.dry_run:
                write_section(args.doc, name, study.report(args.doc, args.figures))
                print(f"[{name}] report written to {args.doc}")
    except (StudyError, FileNotFoundError, ValueError) as error:
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
