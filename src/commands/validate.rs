//! `fathom validate`: every problem of a project file, with its path and a hint.

use std::process::ExitCode;

use fathom_project::ConfigError;

pub(crate) fn run(path: &std::path::Path) -> ExitCode {
    match fathom_project::load(path) {
        Ok(project) => {
            let features: usize = project.plans.iter().map(|p| p.feature_names().count()).sum::<usize>()
                + project.table_plans.iter().map(|p| p.aggregations.len()).sum::<usize>();
            println!(
                "{}: ok — project {:?}, {} sources ({} CDC tables), {} feature sets, {features} features, {} feature vectors, {} models",
                path.display(),
                project.name,
                project.sources.len(),
                project.tables.len(),
                project.plans.len() + project.table_plans.len(),
                project.vectors.len(),
                project.models.len()
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid { path, problems }) => {
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::from(1)
        }
        Err(e) => crate::report(Err(e.into())),
    }
}
