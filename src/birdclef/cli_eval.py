"""``birdclef evaluate``'s intervals: ``--bootstrap N``, ``--seed``, ``--compare OTHER.csv`` (see
:mod:`birdclef.eval.intervals`)."""

from __future__ import annotations

import argparse
import sys

from birdclef.errors import BirdclefError


def bootstrap_lines(args: argparse.Namespace) -> dict | None:
    """Print the bootstrap intervals the flags ask for; return them as a JSON-able dict.

    Row_ids that do not read ``<stem>_<end_s>`` give no files to resample: without --compare that is a note on
    stderr and None (the score itself stands); with --compare, an error.

    Raises:
        BirdclefError: --bootstrap below 1 with --compare, a negative --bootstrap, unreadable / misaligned files,
            or malformed row_ids with --compare.
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
        if args.compare is not None:
            raise BirdclefError(f"{args.solution}: {exc}; --compare resamples soundscape files") from None
        print(f"birdclef evaluate: note: no bootstrap interval: {args.solution}: {exc}", file=sys.stderr)
        return None
    for line in report.lines():
        print(line)
    return report.to_dict()
