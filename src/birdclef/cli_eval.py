"""``birdclef evaluate``'s intervals: ``--bootstrap N``, ``--seed``, ``--compare OTHER.csv`` (see
:mod:`birdclef.eval.intervals`)."""

from __future__ import annotations

import argparse

from birdclef.errors import BirdclefError


def bootstrap_lines(args: argparse.Namespace) -> dict:
    """Print the bootstrap intervals the flags ask for; return them as a JSON-able dict.

    Raises:
        BirdclefError: --bootstrap below 1 with --compare, a negative --bootstrap, or unreadable / misaligned files.
    """
    from birdclef.eval.intervals import bootstrap_report
    from birdclef.eval.metrics import class_groups, read_aligned

    if args.bootstrap < 0 or (args.compare is not None and args.bootstrap < 1):
        raise BirdclefError(f"--bootstrap must be a positive number of resamples"
                            f"{' with --compare' if args.compare is not None else ''}, got {args.bootstrap}")
    target, probs, classes, row_ids = read_aligned(args.submission, args.solution)
    other = None if args.compare is None else read_aligned(args.compare, args.solution)[1]
    groups = class_groups(args.taxonomy) if args.taxonomy is not None else None
    try:
        report = bootstrap_report(target, probs, row_ids, classes, args.bootstrap, args.seed, groups, other,
                                  other_name=str(args.compare))
    except ValueError as exc:  # a malformed row_id
        raise BirdclefError(f"{args.solution}: {exc}") from None
    for line in report.lines():
        print(line)
    return report.to_dict()
