//! What can be checked here of the deployment files (no Docker engine or cluster on these
//! machines): every YAML parses; the compose stack's and the Kubernetes manifests' commands,
//! flags, environment variables, mounted config paths and ports match what the `fathom` binary
//! actually reads (its `--help` and the project file's `env:` references); every shipped project
//! file passes `fathom validate`; the image is multi-stage, non-root, with `fathom` as entrypoint.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fathom(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fathom")).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// `FATHOM_*` variables the binary reads: those its `--help` lists for `command`.
fn env_vars(command: &str) -> BTreeSet<String> {
    let (ok, help) = fathom(&[command, "--help"]);
    assert!(ok, "{help}");
    help.match_indices("[env: ").map(|(i, _)| help[i + 6..].split('=').next().unwrap().to_string()).collect()
}

/// Flags `command --help` lists.
fn flags(command: &str) -> BTreeSet<String> {
    let (_, help) = fathom(&[command, "--help"]);
    help.split_whitespace()
        .filter_map(|w| w.strip_prefix("--").map(|f| format!("--{}", f.trim_end_matches(','))))
        .collect()
}

/// `env:NAME` references in a project file.
fn config_env_refs(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.match_indices("env:")
        .map(|(i, _)| text[i + 4..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect()
}

/// Checks a `fathom` command line against the binary: a known subcommand, known flags.
fn check_command(args: &[String], context: &str) {
    let (_, top) = fathom(&["--help"]);
    let sub = &args[0];
    assert!(top.contains(&format!("  {sub} ")), "{context}: `{sub}` is not a fathom command:\n{top}");
    let known = flags(sub);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(known.contains(flag.as_str()), "{context}: `fathom {sub}` has no {flag} (has {known:?})");
    }
}

#[test]
fn every_yaml_parses_and_every_project_file_validates() {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy"), &mut files);
    yaml_files(&root().join("dashboards"), &mut files);
    yaml_files(&root().join("examples"), &mut files);
    assert!(files.len() >= 12, "{files:?}");
    let mut projects = 0;
    for file in &files {
        let docs = documents(file);
        assert!(!docs.is_empty(), "{}", file.display());
        if docs[0].get("project").is_some() {
            let (ok, out) = fathom(&["validate", "-c", file.to_str().unwrap()]);
            assert!(ok, "{out}");
            projects += 1;
        }
    }
    assert_eq!(projects, 3, "demo, kafka-redis, deploy");
}

#[test]
fn the_compose_stack_matches_the_binary() {
    let deploy = root().join("deploy");
    let compose = &documents(&deploy.join("docker-compose.yml"))[0];
    let services = compose["services"].as_mapping().unwrap();
    for name in ["kafka", "redis", "minio", "minio-init", "influxdb", "grafana", "fathom", "demo-producer"] {
        assert!(services.contains_key(name), "service {name}");
    }
    let fathom_service = &compose["services"]["fathom"];
    let command: Vec<String> =
        fathom_service["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    check_command(&command, "compose fathom");
    // the -c path is mounted from a file that exists and validates
    let config_at = command.iter().skip_while(|a| *a != "-c").nth(1).expect("-c PATH").clone();
    let volumes: Vec<(String, String)> = fathom_service["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .map(|v| {
            let mut parts = v.split(':');
            (parts.next().unwrap().to_string(), parts.next().unwrap().to_string())
        })
        .collect();
    let (source, _) = volumes.iter().find(|(_, target)| *target == config_at).expect("the config is mounted");
    let config = deploy.join(source);
    let (ok, out) = fathom(&["validate", "-c", config.to_str().unwrap()]);
    assert!(ok, "{out}");
    // the reference profile (relative to the config) is mounted too and is a profile
    let project = fathom_project::load(&config).unwrap();
    for (model, m) in &project.models {
        let reference = m.reference.clone().unwrap_or_else(|| format!("profiles/{model}.json").into());
        let inside = Path::new(&config_at).parent().unwrap().join(&reference);
        let mounted = volumes
            .iter()
            .find(|(_, t)| inside.starts_with(t))
            .unwrap_or_else(|| panic!("{} not mounted", inside.display()));
        let on_disk = deploy.join(&mounted.0).join(inside.strip_prefix(&mounted.1).unwrap());
        fathom_monitor::profile::Profile::load(&on_disk).unwrap();
    }
    // every FATHOM_* variable set is one the binary reads; every env: reference is provided
    let environment = fathom_service["environment"].as_mapping().unwrap();
    let set: BTreeSet<String> = environment.keys().map(|k| k.as_str().unwrap().to_string()).collect();
    let read: BTreeSet<String> = env_vars("serve").union(&config_env_refs(&config)).cloned().collect();
    for var in set.iter().filter(|v| v.starts_with("FATHOM_")) {
        assert!(read.contains(var), "compose sets {var}, which fathom does not read ({read:?})");
    }
    for var in config_env_refs(&config) {
        assert!(set.contains(&var), "the config needs {var}; compose does not set it");
    }
    // the published port is the one the API listens on
    let port = project.server.listen.port().to_string();
    let ports: Vec<&str> = fathom_service["ports"].as_sequence().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(ports.iter().any(|p| p.ends_with(&format!(":{port}"))), "{ports:?} vs listen {port}");
    // the offline store is the bucket MinIO serves: made by minio-init before Fathom starts,
    // reached with MinIO's own credentials
    let bucket = project.stores.offline.parquet.path.to_string_lossy().to_string();
    let bucket = bucket.strip_prefix("s3://").expect("the stack's offline store is in S3").split('/').next().unwrap();
    let (minio, init) = (&compose["services"]["minio"], &compose["services"]["minio-init"]);
    let init_script = init["entrypoint"][2].as_str().unwrap();
    assert!(init_script.ends_with(&format!("mc mb --ignore-existing stack/{bucket}")), "{init_script}");
    assert_eq!(
        fathom_service["depends_on"]["minio-init"]["condition"].as_str(),
        Some("service_completed_successfully")
    );
    assert_eq!(init["depends_on"]["minio"]["condition"].as_str(), Some("service_healthy"));
    assert_eq!(environment["AWS_ENDPOINT"].as_str(), Some("http://minio:9000"));
    assert_eq!(environment["AWS_ACCESS_KEY_ID"], minio["environment"]["MINIO_ROOT_USER"]);
    assert_eq!(environment["AWS_SECRET_ACCESS_KEY"], minio["environment"]["MINIO_ROOT_PASSWORD"]);
    assert_eq!(init["environment"]["FATHOM_S3_SECRET"], minio["environment"]["MINIO_ROOT_PASSWORD"]);
    // the producer is a fathom command too, and writes the topics the config reads
    let producer = &compose["services"]["demo-producer"];
    let args: Vec<String> =
        producer["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    check_command(&args, "compose demo-producer");
    for var in producer["environment"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap()) {
        assert!(env_vars("demo-producer").contains(var), "demo-producer: {var}");
    }
    assert!(project.sources.iter().any(|(_, s)| s.kafka.as_ref().is_some_and(|k| k.topic == "transactions")));
    assert_eq!(project.predictions_topic("fraud"), "fraud.predictions");
    // Grafana gets the provisioning and the dashboards
    let grafana: Vec<&str> =
        compose["services"]["grafana"]["volumes"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for needle in ["provisioning/datasources", "provisioning/dashboards", "/var/lib/grafana/dashboards/fathom"] {
        assert!(grafana.iter().any(|v| v.contains(needle)), "grafana mounts {needle}");
    }
    // InfluxDB 2 maps the bucket for InfluxQL
    let init = std::fs::read_to_string(deploy.join("influxdb-init/10-fathom-dbrp.sh")).unwrap();
    assert!(init.contains("influx v1 dbrp create --db fathom"));
}

#[test]
fn the_kubernetes_manifests_match_the_binary() {
    let dir = root().join("deploy");
    let kustomization = &documents(&dir.join("kustomization.yaml"))[0];
    let mut deployments = Vec::new();
    let mut all = Vec::new();
    for resource in kustomization["resources"].as_sequence().unwrap() {
        for doc in documents(&dir.join(resource.as_str().unwrap())) {
            if doc["kind"] == "Deployment" {
                deployments.push(doc.clone());
            }
            all.push(doc);
        }
    }
    for generated in kustomization["configMapGenerator"][0]["files"].as_sequence().unwrap() {
        let entry = generated.as_str().unwrap();
        let file = entry.split_once('=').map_or(entry, |(_, f)| f);
        assert!(dir.join(file).exists(), "{file}");
    }
    // kustomize itself renders it (kubectl's built-in kustomize; no cluster needed). The test
    // command checks that kubectl is there; a missing kubectl fails here rather than skipping
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("kubectl is needed to render deploy/ with kustomize: {e}"));
    assert!(out.status.success(), "kubectl kustomize: {}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8_lossy(&out.stdout);
    for kind in ["kind: ConfigMap", "kind: Deployment", "kind: Service"] {
        assert!(rendered.contains(kind), "{kind} in the render: {rendered}");
    }
    for role in ["fathom-ingest", "fathom-api", "fathom-monitor"] {
        assert!(rendered.contains(&format!("name: {role}")), "{role} in the render: {rendered}");
    }
    let config = root().join("deploy/fathom.yaml");
    let project = fathom_project::load(&config).unwrap();
    let secret = &documents(&dir.join("kubernetes/secret.example.yaml"))[0];
    let secret_keys: BTreeSet<String> =
        secret["stringData"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_string()).collect();
    for var in config_env_refs(&config) {
        assert!(secret_keys.contains(&var), "the config needs {var}; the Secret does not carry it");
    }
    let mut roles = BTreeSet::new();
    for d in &deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<String> =
            container["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        check_command(&args, name);
        let role = args.iter().skip_while(|a| *a != "--roles").nth(1).expect("--roles").clone();
        fathom_runtime::Roles::parse(&role).unwrap_or_else(|e| panic!("{name}: {e}"));
        roles.insert(role);
        let config_at = args.iter().skip_while(|a| *a != "-c").nth(1).expect("-c").clone();
        let mounts = container["volumeMounts"].as_sequence().unwrap();
        assert!(
            mounts.iter().any(|m| m["mountPath"].as_str() == Some(config_at.as_str())),
            "{name}: {config_at} mounted"
        );
        assert_eq!(container["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"), "{name}");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"), "{name}");
        assert!(
            container["resources"]["requests"]["cpu"].is_string()
                && container["resources"]["requests"]["memory"].is_string(),
            "{name}"
        );
        let port = container["ports"][0]["containerPort"].as_u64().unwrap();
        assert_eq!(port, u64::from(project.server.listen.port()), "{name}: the port the API listens on");
        for var in container["env"].as_sequence().unwrap().iter().map(|e| e["name"].as_str().unwrap()) {
            assert!(env_vars("serve").contains(var), "{name}: fathom does not read {var}");
        }
        assert_eq!(d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    }
    assert_eq!(roles, ["api", "ingest", "monitor"].iter().map(|s| s.to_string()).collect(), "one Deployment per role");
    let scaled = all.iter().find(|d| d["kind"] == "ScaledObject").expect("KEDA ScaledObject");
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"].as_str(), Some("fathom-ingest"));
    let trigger = &scaled["spec"]["triggers"][0]["metadata"];
    assert_eq!(
        trigger["consumerGroup"].as_str(),
        Some(project.group_id().as_str()),
        "lag of the group ingest consumes in"
    );
    let topic = trigger["topic"].as_str().unwrap();
    assert!(project.sources.iter().any(|(_, s)| s.kafka.as_ref().is_some_and(|k| k.topic == topic)), "{topic}");
}

#[test]
fn the_image_is_multi_stage_non_root_with_fathom_as_entrypoint() {
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")) >= 2, "multi-stage");
    assert!(dockerfile.contains("USER 10001"), "non-root");
    assert!(dockerfile.contains(r#"ENTRYPOINT ["fathom"]"#));
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/healthz"));
    // every directory the build copies exists
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for path in &words[1..words.len() - 1] {
            assert!(root().join(path).exists(), "COPY {path}");
        }
    }
}
