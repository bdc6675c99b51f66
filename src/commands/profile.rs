//! `fathom profile`: a model's reference profile from its training set.

pub(crate) struct ProfileOptions<'a> {
    pub(crate) output: Option<&'a std::path::Path>,
    pub(crate) top_k: usize,
    pub(crate) prediction: Option<&'a str>,
}

pub(crate) fn run(
    config: &std::path::Path,
    model: &str,
    training_set: &std::path::Path,
    options: &ProfileOptions<'_>,
) -> anyhow::Result<()> {
    let project = fathom_project::load(config)?;
    let mut features = project.model_features(model)?;
    if let Some(column) = options.prediction {
        features.push(column.to_string());
    }
    let training_set = super::Input::fetch(training_set, &project.stores.offline.parquet.options)?;
    let mut profile = fathom_monitor::profile::build(model, &features, &training_set.path, options.top_k)?;
    if let Some(column) = options.prediction {
        let entry = profile.features.remove(column).expect("profiled above");
        profile.features.insert("prediction".into(), entry);
    }
    let path = options.output.map_or_else(|| project.reference_path(model), std::path::Path::to_path_buf);
    profile.save(&path)?;
    println!(
        "{}: reference profile of {model:?}: {} rows, {} features",
        path.display(),
        profile.rows,
        profile.features.len()
    );
    Ok(())
}
