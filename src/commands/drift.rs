//! `fathom drift`: a batch drift report of two files, to JSON and HTML, and a summary on stdout.

use anyhow::Context as _;

pub(crate) struct DriftOptions<'a> {
    pub(crate) columns: &'a [String],
    pub(crate) json: &'a std::path::Path,
    pub(crate) html: &'a std::path::Path,
    pub(crate) thresholds: (f64, f64),
}

/// `fathom drift`: the report to JSON and HTML, and a summary on stdout.
pub(crate) fn run(
    reference: &std::path::Path,
    current: &std::path::Path,
    profile: Option<&std::path::Path>,
    options: &DriftOptions<'_>,
) -> anyhow::Result<()> {
    use fathom_monitor::report;
    let (possible, detected) = options.thresholds;
    if !(0.0..=1.0).contains(&possible) || !(0.0..=1.0).contains(&detected) || possible > detected {
        anyhow::bail!("thresholds must satisfy 0 ≤ --possible ≤ --detected ≤ 1");
    }
    let none = Default::default();
    let profile = profile.map(|p| super::Input::fetch(p, &none)).transpose()?;
    let profile = profile.map(|p| fathom_monitor::profile::Profile::load(&p.path)).transpose()?;
    let locations = [reference.display().to_string(), current.display().to_string()];
    let (reference, current) = (super::Input::fetch(reference, &none)?, super::Input::fetch(current, &none)?);
    let columns = (!options.columns.is_empty()).then_some(options.columns);
    let started = std::time::Instant::now();
    let mut result = report::run(&reference.path, &current.path, profile.as_ref(), columns, options.thresholds)?;
    result.files = locations; // as given, not the downloads
    let elapsed = started.elapsed();
    std::fs::write(options.json, serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("writing {}", options.json.display()))?;
    std::fs::write(options.html, report::html(&result))
        .with_context(|| format!("writing {}", options.html.display()))?;
    let name = |s| fathom_monitor::window::status_name(s);
    println!("{:<32} {:>8} {:>8} {:>8} {:>10}  status", "feature", "score", "tvd", "ks", "ks_p");
    let nan = f64::NAN;
    for f in &result.features {
        let d = f.drift.as_ref();
        println!(
            "{:<32} {:>8.4} {:>8.4} {:>8.4} {:>10.3e}  {}",
            f.name,
            f.score.unwrap_or(nan),
            d.map_or(nan, |d| d.tvd),
            d.and_then(|d| d.ks).unwrap_or(nan),
            d.and_then(|d| d.ks_p.or(d.chi2_p)).unwrap_or(nan),
            name(f.status)
        );
    }
    for s in &result.skipped {
        println!("{:<32} skipped: {}", s.name, s.reason);
    }
    println!(
        "overall {} (score {:.4}) over {} features in {:.2} s → {}, {}",
        name(result.status),
        result.score.unwrap_or(nan),
        result.features.len(),
        elapsed.as_secs_f64(),
        options.json.display(),
        options.html.display()
    );
    Ok(())
}
