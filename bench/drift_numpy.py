"""The drift computation of `fathom bench drift` in numpy/scipy: the live window binned on the
reference edges (20 equal-width bins + 2 outer), then TVD, Hellinger, KL, PSI, Jensen-Shannon,
Wasserstein-1, KS and its p-value per feature, and the mean score. Same shapes and distributions
as fathom's run (its own random numbers); only the drift computation is timed.

usage: python bench/drift_numpy.py ROWS FEATURES
"""
import sys
import time

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.special import kolmogorov
from scipy.stats import wasserstein_distance

rows, features = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(9)
references = [rng.normal(0, 1, 100_000) for _ in range(features)]
live = [rng.normal(0.5 if f % 5 == 0 else 0.0, 1, rows) for f in range(features)]
ref_edges = [np.linspace(r.min(), r.max(), 21) for r in references]
ref_counts = [np.concatenate([[0], np.histogram(r, e)[0], [0]]) for r, e in zip(references, ref_edges)]

started = time.time()
eps = 1e-4
scores = []
for counts, edges, values in zip(ref_counts, ref_edges, live):
    inner = np.histogram(values, edges)[0]
    q_counts = np.concatenate([[np.sum(values < edges[0])], inner, [np.sum(values > edges[-1])]])
    p, q = counts / counts.sum(), q_counts / q_counts.sum()
    pg, qg = np.where(p > 0, p, eps), np.where(q > 0, q, eps)
    tvd = 0.5 * np.abs(p - q).sum()
    hellinger = np.sqrt(max(0.0, 1 - np.sqrt(p * q).sum()))
    kl = 0.5 * ((pg * np.log(pg / qg)).sum() + (qg * np.log(qg / pg)).sum())
    psi = ((qg - pg) * np.log(qg / pg)).sum()
    js = jensenshannon(p, q)
    w = edges[1] - edges[0]
    centres = np.concatenate([[edges[0] - w / 2], (edges[:-1] + edges[1:]) / 2, [edges[-1] + w / 2]])
    wasserstein = wasserstein_distance(centres, centres, p, q)
    d = np.abs(np.cumsum(p) - np.cumsum(q)).max()
    en = np.sqrt(counts.sum() * q_counts.sum() / (counts.sum() + q_counts.sum()))
    ks_p = kolmogorov((en + 0.12 + 0.11 / en) * d)
    scores.append((tvd + hellinger) / 2)
secs = time.time() - started
print(f"numpy/scipy drift: {rows} rows × {features} features, same statistics, in {secs:.3f}s = {rows * features / secs / 1e6:.1f} M values/s (score {np.mean(scores):.3f})")
