#!/usr/bin/env python3
"""tests/reference/check_tensorboard.py — reads a directory of TensorBoard event files with
TensorBoard's own EventAccumulator (pip package `tensorboard`) and prints every scalar, so a person
or a script can see that TensorBoard reads what trainer/tensorboard.h wrote.

    MOEASR_TB_KEEP_DIR=/tmp/tb build/tests/tensorboard_test --gtest_filter='EventWriterTest.Writes*'
    /work/venv-torch/bin/python tests/reference/check_tensorboard.py /tmp/tb \
        --expect train/train_loss=5 --expect train/lr_0=5

Prints "<tag> <step> <value>" per scalar, then one line per tag with its count. Exits 1 when the
directory holds no scalars, or when an --expect TAG=N does not find exactly N scalars under TAG.
"""
import argparse
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir", help="directory holding events.out.tfevents.* files")
    parser.add_argument("--expect", action="append", default=[], metavar="TAG=N",
                        help="require exactly N scalar events under TAG (repeatable)")
    args = parser.parse_args()

    accumulator = EventAccumulator(args.logdir, size_guidance={"scalars": 0})  # 0: keep every event
    accumulator.Reload()
    tags = accumulator.Tags().get("scalars", [])
    if not tags:
        print(f"check_tensorboard: no scalars found in {args.logdir}", file=sys.stderr)
        return 1
    counts = {}
    for tag in sorted(tags):
        events = accumulator.Scalars(tag)
        counts[tag] = len(events)
        for e in events:
            print(f"{tag} {e.step} {e.value:.9g}")
    for tag in sorted(counts):
        print(f"# {tag}: {counts[tag]} scalars")
    failed = False
    for spec in args.expect:
        tag, _, n = spec.rpartition("=")
        if counts.get(tag, 0) != int(n):
            print(f"check_tensorboard: expected {n} scalars under {tag}, found {counts.get(tag, 0)}",
                  file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
