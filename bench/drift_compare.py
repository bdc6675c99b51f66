"""Batch drift on one window, three ways, on the same Parquet files:

  python bench/drift_compare.py gen DIR ROWS FEATURES   # reference.parquet + current.parquet
  python bench/drift_compare.py scipy DIR               # the statistics `fathom drift` computes
  python bench/drift_compare.py evidently DIR           # Evidently's DataDriftPreset

`scipy` computes, per column, exactly what `fathom drift` reports: KS statistic and p-value on the
raw samples (`scipy.stats.ks_2samp`, method auto), Wasserstein-1 on the raw samples
(`wasserstein_distance`), and TVD, Hellinger, symmetric KL, PSI and Jensen-Shannon on the
reference's 20 equal-width bins plus two outer bins. `evidently` runs `Report([DataDriftPreset()])`
(its defaults: Wasserstein distance (normed) for numeric columns of more than 1,000 rows). Both
time the computation only (the files are read first); `fathom drift` prints its own time, which
includes reading both files.
"""
import sys
import time

import numpy as np
import pandas as pd

mode, out = sys.argv[1], sys.argv[2]

if mode == "gen":
    rows, features = int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(11)
    ref = pd.DataFrame({f"f{i:02d}": rng.normal(0, 1, rows) for i in range(features)})
    # every fifth feature shifted by half a standard deviation, every seventh widened
    cur = pd.DataFrame(
        {
            f"f{i:02d}": rng.normal(0.5 if i % 5 == 0 else 0.0, 1.5 if i % 7 == 0 else 1.0, rows)
            for i in range(features)
        }
    )
    ref.to_parquet(f"{out}/reference.parquet")
    cur.to_parquet(f"{out}/current.parquet")
    sys.exit(0)

ref = pd.read_parquet(f"{out}/reference.parquet")
cur = pd.read_parquet(f"{out}/current.parquet")

if mode == "scipy":
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import ks_2samp, wasserstein_distance

    started = time.time()
    eps = 1e-4
    scores = []
    for column in ref.columns:
        a, b = ref[column].to_numpy(), cur[column].to_numpy()
        ks = ks_2samp(a, b)
        w = wasserstein_distance(a, b)
        edges = np.linspace(a.min(), a.max(), 21)

        def counts(x):
            inner = np.histogram(x, edges)[0]
            return np.concatenate([[np.sum(x < edges[0])], inner, [np.sum(x > edges[-1])]])

        p, q = counts(a) / len(a), counts(b) / len(b)
        pg, qg = np.where(p > 0, p, eps), np.where(q > 0, q, eps)
        tvd = 0.5 * np.abs(p - q).sum()
        hellinger = np.sqrt(max(0.0, 1 - np.sqrt(p * q).sum()))
        kl = 0.5 * ((pg * np.log(pg / qg)).sum() + (qg * np.log(qg / pg)).sum())
        psi = ((qg - pg) * np.log(qg / pg)).sum()
        js = jensenshannon(p, q)
        scores.append((tvd + hellinger) / 2)
    elapsed = time.time() - started
    print(f"numpy/scipy: {elapsed:.2f} s for {len(ref)} x {len(ref.columns)} (score {np.mean(scores):.4f})")
elif mode == "evidently":
    from evidently import Report
    from evidently.presets import DataDriftPreset

    started = time.time()
    result = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    summary = result.dict()["metrics"][0]["value"]
    elapsed = time.time() - started
    print(f"evidently DataDriftPreset: {elapsed:.2f} s for {len(ref)} x {len(ref.columns)} ({summary})")
