//! The Grafana dashboards against Grafana's own published types: each `dashboards/*.json` is
//! compiled with `tsc --strict` as a `Dashboard` from npm `@grafana/schema` (installed by the test
//! command; `FATHOM_TEST_GRAFANA` names its directory). A deliberately broken copy must fail, so
//! the check can fail. The queries themselves run against InfluxDB in `tests/monitoring.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dashboards() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Compiles `const d: Dashboard = <json>;` with tsc; returns tsc's output on failure.
fn typecheck(json: &str, dir: &Path, grafana: &Path) -> Result<(), String> {
    let module = format!(
        "import type {{ Dashboard }} from '@grafana/schema';\nconst d: Dashboard = {json};\nexport default d;\n"
    );
    std::fs::write(dir.join("check.ts"), module).unwrap();
    let config = r#"{"compilerOptions": {"strict": true, "noEmit": true, "moduleResolution": "bundler", "module": "esnext",
        "target": "es2020", "skipLibCheck": true, "types": []}, "files": ["check.ts"]}"#;
    std::fs::write(dir.join("tsconfig.json"), config).unwrap();
    let link = dir.join("node_modules");
    if !link.exists() {
        std::os::unix::fs::symlink(grafana.join("node_modules"), &link).unwrap();
    }
    let out = Command::new(grafana.join("node_modules/.bin/tsc")).arg("-p").arg(dir).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn every_dashboard_is_a_grafana_schema_dashboard() {
    let grafana = PathBuf::from(
        std::env::var("FATHOM_TEST_GRAFANA").unwrap_or_else(|_| "/tmp/fathom-test-services/grafana".into()),
    );
    assert!(
        grafana.join("node_modules/@grafana/schema").exists(),
        "run ./scripts/test --services to install @grafana/schema"
    );
    let dir = tempfile::tempdir().unwrap();
    let files = dashboards();
    assert_eq!(files.len(), 4, "fleet, model, feature store, alerts: {files:?}");
    let version: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(grafana.join("node_modules/@grafana/schema/package.json")).unwrap(),
    )
    .unwrap();
    for file in &files {
        let json = std::fs::read_to_string(file).unwrap();
        typecheck(&json, dir.path(), &grafana)
            .unwrap_or_else(|e| panic!("{} against @grafana/schema {}: {e}", file.display(), version["version"]));
        let board: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(board["schemaVersion"], 42, "{}: the current schema version", file.display());
        for panel in board["panels"].as_array().unwrap() {
            assert_eq!(panel["datasource"]["uid"], "fathom-influxdb", "{}: {}", file.display(), panel["title"]);
        }
    }
    // the check can fail: a panel with a string id and a variable of an unknown type
    let broken = std::fs::read_to_string(&files[0]).unwrap().replacen("\"id\": 1,", "\"id\": \"one\",", 1);
    assert!(typecheck(&broken, dir.path(), &grafana).is_err(), "a broken dashboard must not type-check");
}

#[test]
fn provisioning_points_at_the_dashboards_and_the_datasource_uid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/provisioning");
    let datasources: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root.join("datasources/fathom.yaml")).unwrap()).unwrap();
    let source = &datasources["datasources"][0];
    assert_eq!((source["uid"].as_str(), source["type"].as_str()), (Some("fathom-influxdb"), Some("influxdb")));
    let providers: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(root.join("dashboards/fathom.yaml")).unwrap()).unwrap();
    assert_eq!(providers["providers"][0]["type"].as_str(), Some("file"));
    assert!(providers["providers"][0]["options"]["path"].as_str().is_some());
}
