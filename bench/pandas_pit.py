"""The same point-in-time job as `fathom bench dataset`, the way it is usually written in pandas:
time-based rolling windows per key over the events, then `merge_asof` of the entity rows on
(key, time, backward). Reads the files fathom wrote; prints rows/s and peak RSS.

Semantics differ slightly from fathom's (and are the reason teams get train/serve skew): the
rolling value joined is the one at the key's last event before T, i.e. a window ending at that
event, not at T; fathom's windows end at T, bucketed like the online store.

usage: python bench/pandas_pit.py DIR   (DIR holds offline/tx/**.parquet and rows.parquet)
"""
import glob
import resource
import sys
import time

import pandas as pd
import pyarrow.parquet as pq

root = sys.argv[1]
started = time.time()
files = sorted(glob.glob(f"{root}/offline/tx/*/*.parquet"))
events = pd.concat(
    [pq.read_table(f, columns=["card_id", "merchant_id", "_event_time", "amount"]).to_pandas() for f in files],
    ignore_index=True,
)
rows = pq.read_table(f"{root}/rows.parquet").to_pandas()
rows["ts"] = rows["ts"].astype(events["_event_time"].dtype)
read_secs = time.time() - started


def rolled(key, spec):
    """Rolling aggregations of `amount` per `key` for each (window, functions)."""
    ordered = events.sort_values([key, "_event_time"])
    out = ordered[[key, "_event_time"]].copy()
    grouped = ordered.set_index("_event_time").groupby(key)["amount"]
    for window, functions in spec:
        roll = grouped.rolling(window)
        for f in functions:
            out[f"{key}_amount_{f}_{window}"] = getattr(roll, f)().to_numpy()
    return out.sort_values("_event_time")


result = rows.sort_values("ts")
for key, spec in [
    ("card_id", [("1h", ["count", "sum", "mean", "max"]), ("1D", ["count", "sum", "mean", "max"]), ("7D", ["sum", "std"])]),
    ("merchant_id", [("1h", ["count", "mean"]), ("1D", ["count", "mean"])]),
]:
    features = rolled(key, spec)
    result = pd.merge_asof(result, features, left_on="ts", right_on="_event_time", by=key, direction="backward")
    result = result.drop(columns=["_event_time"])
secs = time.time() - started
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(
    f"pandas merge_asof + rolling: {len(result)} rows × 14 features over {len(events)} events in {secs:.1f}s "
    f"(reading {read_secs:.1f}s) = {len(result) / secs:.0f} rows/s, peak RSS {peak_mib:.0f} MiB"
)
