"""``python -m croco.studies <study> [--scale cpu|paper] [--jobs N] [--dry-run | --report-only]``: run a study's
jobs that are not done yet, then write its figures and its generated part of docs/results.md (docs/results_paper.md
at the paper's scale). Studies: see ``croco.studies``; scales: ``croco.studies.common``."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from croco.studies import STUDIES
from croco.studies.common import SCALES, write_section
from croco.studies.runner import StudyError, run_stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m croco.studies", description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=[*STUDIES, "all"])
    parser.add_argument("--scale", choices=list(SCALES), default="cpu",
                        help="cpu: the smoke setting (docs/results.md); paper: the paper's networks and recipes (GPU)")
    parser.add_argument("--jobs", type=int, default=1, help="jobs of a stage run at a time (default 1)")
    parser.add_argument("--pretrain-override", action="append", default=[], metavar="KEY=VALUE",
                        help="added to every pretraining, e.g. trainer=ddp (repeatable)")
    parser.add_argument("--finetune-override", action="append", default=[], metavar="KEY=VALUE",
                        help="added to every fine-tune and probe (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands that would run")
    parser.add_argument("--report-only", action="store_true", help="only write the figures and the docs")
    parser.add_argument("--doc", type=Path, help="default: the scale's (docs/results.md, docs/results_paper.md)")
    parser.add_argument("--figures", type=Path, help="default: the scale's (docs/figures/results[_paper])")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale].with_overrides(args.pretrain_override, args.finetune_override)
    doc, figures = args.doc or Path(scale.doc), args.figures or Path(scale.figures)
    names = list(STUDIES) if args.study == "all" else [args.study]
    try:
        for name in names:
            study = importlib.import_module(STUDIES[name])
            if not args.report_only:
                run_stages(name, study.stages(scale), jobs=args.jobs, dry_run=args.dry_run)
            if not args.dry_run:
                write_section(doc, name, study.report(doc, figures, scale))
                print(f"[{name}] report written to {doc}")
    except (StudyError, FileNotFoundError, ValueError) as error:
        print(f"error: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
