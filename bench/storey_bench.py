"""storey's AggregateByKey (the engine behind MLRun's feature store) on the events `fathom bench
engine` wrote: same keys, same event times, same 5 functions x 3 sliding windows with 1m
buckets. Prints `events_per_second=<rate>`.

Usage: python storey_bench.py EVENTS.ndjson   (see bench/README.md for the virtualenv)
"""
import json
import sys
import time
from datetime import datetime, timezone

from storey import AggregateByKey, FieldAggregator, NoopDriver, Reduce, SyncEmitSource, Table, build_flow
from storey.dtypes import SlidingWindows


def main(path):
    events = []
    with open(path) as f:
        for line in f:
            e = json.loads(line)
            e["ts"] = datetime.fromtimestamp(e["ts"] / 1000, tz=timezone.utc)
            events.append(e)
    controller = build_flow(
        [
            SyncEmitSource(key_field="card"),
            AggregateByKey(
                [
                    FieldAggregator(
                        "amount",
                        "amount",
                        ["count", "sum", "avg", "max", "stddev"],
                        SlidingWindows(["10m", "1h", "24h"], "1m"),
                    )
                ],
                Table("bench", NoopDriver()),
                time_field="ts",
            ),
            Reduce(0, lambda acc, _: acc + 1),
        ]
    ).run()
    started = time.perf_counter()
    for e in events:
        controller.emit(e, key=e["card"])
    controller.terminate()
    emitted = controller.await_termination()
    elapsed = time.perf_counter() - started
    assert emitted == len(events), f"storey emitted {emitted} of {len(events)} events"
    print(f"events={len(events)} seconds={elapsed:.3f}")
    print(f"events_per_second={len(events) / elapsed:.1f}")


if __name__ == "__main__":
    main(sys.argv[1])
