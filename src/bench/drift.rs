//! `fathom bench drift`: every drift statistic over a window, and numpy/scipy on data of the
//! same shape.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::Context as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Drift over a window: `rows` live values of each of `features` numeric features binned on the
/// reference edges, then every statistic per feature and the model status; optionally numpy/scipy
/// doing the same on data of the same shape in the same run.
pub(crate) fn drift(rows: usize, features: usize, numpy_python: Option<&Path>) -> anyhow::Result<()> {
    use fathom_monitor::drift;
    use fathom_monitor::profile::NumericProfile;

    let mut rng = SmallRng::seed_from_u64(9);
    let normal = |rng: &mut SmallRng, mean: f64| -> f64 {
        // Box–Muller: enough for a benchmark's data
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        mean + (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let references: Vec<NumericProfile> = (0..features)
        .map(|_| NumericProfile::build((0..100_000).map(|_| normal(&mut rng, 0.0)).collect(), 0))
        .collect();
    let live: Vec<Vec<f64>> = (0..features)
        .map(|f| (0..rows).map(|_| normal(&mut rng, if f % 5 == 0 { 0.5 } else { 0.0 })).collect())
        .collect();
    let started = Instant::now();
    let mut drifts = Vec::with_capacity(features);
    for (reference, values) in references.iter().zip(&live) {
        let mut counts = vec![0u64; reference.counts.len()];
        for &x in values {
            counts[reference.bin(x)] += 1;
        }
        drifts.push(drift::numeric(&reference.counts, &counts, &reference.edges));
    }
    let (score, status) = drift::status(&drifts, 0.5, 0.7);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fathom drift: {rows} rows × {features} features binned on the reference edges + 8 statistics each + status in {:.3}s = {:.1} M values/s, one core (score {score:.3}, {status:?})",
        secs,
        (rows * features) as f64 / secs / 1e6
    );
    if let Some(python) = numpy_python {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/drift_numpy.py");
        let out = Command::new(python)
            .arg(&script)
            .arg(rows.to_string())
            .arg(features.to_string())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        anyhow::ensure!(out.status.success(), "numpy bench failed: {}", String::from_utf8_lossy(&out.stderr));
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}
