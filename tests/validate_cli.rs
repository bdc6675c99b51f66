//! `fathom validate`: every problem with its path, exit 1; shipped configs pass.

use std::process::Command;

fn validate(path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fathom")).args(["validate", "-c"]).arg(path).output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn reports_every_problem_with_its_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fathom.yaml");
    std::fs::write(
        &path,
        "project: p\nsources:\n  tx: { key: card_id, timestmap: ts }\n  ok: { key: card_id }\nentities:\n  card: { key: card_id }\nfeature_sets:\n  f:\n    entity: card\n    source: ok\n    ttl: 7y\n    aggregations:\n      - { column: amount, functions: [sum], windows: [10m, 1h, 24x], period: 1m }\n",
    )
    .unwrap();
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
    assert!(stderr.contains("sources.tx.timestmap: unknown field `timestmap`, expected one of"), "{stderr}");
    assert!(stderr.contains("feature_sets.f.ttl: \"7y\" is not a duration (use"), "{stderr}");
    assert!(stderr.contains("feature_sets.f.aggregations[0].windows[2]: \"24x\" is not a duration"), "{stderr}");
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fathom.yaml");
    std::fs::write(&path, "project: p\nsources: [\n").unwrap();
    let (code, _, stderr) = validate(&path);
    assert_eq!(code, 1);
    assert!(stderr.contains("not valid YAML") && stderr.contains("line"), "{stderr}");
}

#[test]
fn every_shipped_config_validates() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for file in std::fs::read_dir(examples).unwrap().flatten() {
        let (code, stdout, stderr) = validate(&file.path());
        assert_eq!(code, 0, "{}: {stderr}", file.path().display());
        assert!(stdout.contains(": ok"), "{stdout}");
    }
}
