//! The `deploy/` files, checked statically (no container engine or cluster runs here): every
//! Kubernetes manifest parses (multi-document YAML) and holds together — replicas, probes on the
//! metrics listener, scrape annotations, non-root, a disruption budget, a shared Redis — and the
//! countersign config each one mounts passes `countersign::config::parse`. The same for
//! docker-compose and the Dockerfile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use countersign::config::{self, Config, StoreConfig};
use serde::Deserialize;
use serde_yaml_ng::Value;

/// The alert rules and the dashboard: compose must mount them.
const OBSERVABILITY: &[&str] = &["prometheus/alerts.yml", "grafana/countersign.json"];

fn deploy(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(relative)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file, merge keys (`<<: *anchor`) applied, empty ones skipped.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let mut value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
            value
                .apply_merge()
                .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn text(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("expected a sequence, got {v:?}"))
}

fn parse_config(yaml: &str, source: &str) -> Config {
    config::parse(yaml, Path::new(source)).unwrap_or_else(|e| panic!("{source}: {e}"))
}

fn port_of(listen: &str) -> u16 {
    listen
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{listen}: {e}"))
        .port()
}

/// `host` of a `redis://host:port` URL.
fn redis_host(config: &Config) -> String {
    let StoreConfig::Redis { url, .. } = &config.store else {
        panic!("replicas need the shared store: store.kind must be redis");
    };
    let rest = url.strip_prefix("redis://").expect("a redis:// URL");
    let authority = rest.split('/').next().unwrap_or_default();
    authority.split(':').next().unwrap_or_default().to_string()
}

// ───────────────────────────── Kubernetes ─────────────────────────────

/// Every manifest in deploy/kubernetes, by file.
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 file name")
                .to_string();
            documents(path)
                .into_iter()
                .map(move |doc| (name.clone(), doc))
        })
        .collect()
}

/// The one object of `kind` (named `name`, when given).
fn object(kind: &str, name: Option<&str>) -> Value {
    let found: Vec<Value> = manifests()
        .into_iter()
        .map(|(_, doc)| doc)
        .filter(|doc| doc["kind"] == kind)
        .filter(|doc| name.is_none_or(|n| doc["metadata"]["name"] == n))
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name:?}");
    found.into_iter().next().expect("one object")
}

fn gateway_deployment() -> Value {
    object("Deployment", Some("countersign"))
}

fn gateway_container(deployment: &Value) -> Value {
    let containers = seq(&deployment["spec"]["template"]["spec"]["containers"]);
    containers
        .iter()
        .find(|c| c["name"] == "countersign")
        .expect("a container named countersign")
        .clone()
}

/// A container port by name, or the number itself.
fn container_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = text(port);
    seq(&container["ports"])
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// The countersign config the Deployment mounts from its ConfigMap, and where.
fn mounted_config() -> (Config, String) {
    let deployment = gateway_deployment();
    let container = gateway_container(&deployment);
    let args: Vec<&str> = seq(&container["args"]).iter().map(text).collect();
    let at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("args name the config with --config");
    let path = args[at + 1].to_string();
    let mount = seq(&container["volumeMounts"])
        .iter()
        .find(|m| path.starts_with(text(&m["mountPath"])))
        .unwrap_or_else(|| panic!("no volume is mounted at {path}"))
        .clone();
    let volume = seq(&deployment["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the config mount's volume")
        .clone();
    let map_name = text(&volume["configMap"]["name"]);
    let key = match mount["subPath"].as_str() {
        Some(sub) => sub.to_string(),
        None => path
            .strip_prefix(text(&mount["mountPath"]))
            .map(|k| k.trim_start_matches('/').to_string())
            .expect("config path under the mount"),
    };
    let map = object("ConfigMap", Some(map_name));
    let yaml = text(&map["data"][key.as_str()]);
    (
        parse_config(yaml, &format!("ConfigMap {map_name} {key}")),
        path,
    )
}

#[test]
fn every_manifest_parses_and_kustomization_lists_them_all() {
    let all = manifests();
    assert!(all.len() >= 6, "{} documents", all.len());
    let mut files = Vec::new();
    for (file, doc) in &all {
        assert!(doc["apiVersion"].is_string(), "{file}: apiVersion");
        assert!(doc["kind"].is_string(), "{file}: kind");
        if doc["kind"] != "Kustomization" {
            assert!(doc["metadata"]["name"].is_string(), "{file}: metadata.name");
            files.push(file.clone());
        }
    }
    files.dedup();
    let kustomization = object("Kustomization", None);
    let listed: Vec<&str> = seq(&kustomization["resources"]).iter().map(text).collect();
    assert_eq!(listed.len(), files.len(), "{listed:?} vs {files:?}");
    for file in &files {
        assert!(
            listed.contains(&file.as_str()),
            "{file} missing from kustomization.yaml"
        );
    }
}

#[test]
fn the_deployment_runs_replicas_probed_and_scraped_on_the_metrics_listener() {
    let deployment = gateway_deployment();
    let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
    assert!(replicas >= 2, "replicas: {replicas}");
    let container = gateway_container(&deployment);
    let (config, _) = mounted_config();
    let metrics = port_of(&config.metrics.as_ref().expect("metrics listener").listen) as u64;
    assert_eq!(
        container_port(&container, &Value::from("http")),
        port_of(&config.listen) as u64
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(container_port(&container, &get["port"]), metrics, "{probe}");
    }
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        metrics.to_string().as_str()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn the_deployment_runs_as_non_root_with_least_privilege() {
    let deployment = gateway_deployment();
    let pod = &deployment["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true);
    assert!(pod["runAsUser"].as_u64().is_some_and(|u| u != 0));
    let container = gateway_container(&deployment);
    let ctx = &container["securityContext"];
    assert_eq!(ctx["allowPrivilegeEscalation"], false);
    assert_eq!(ctx["readOnlyRootFilesystem"], true);
    assert!(seq(&ctx["capabilities"]["drop"]).iter().any(|c| c == "ALL"));
}

#[test]
fn the_configmap_config_parses_and_uses_the_shared_redis() {
    let (config, path) = mounted_config();
    assert_eq!(path, "/etc/countersign/config.yaml", "the image's default");
    let redis = object("Service", Some(&redis_host(&config)));
    let statefulset = object("StatefulSet", None);
    assert_eq!(
        statefulset["spec"]["serviceName"],
        redis["metadata"]["name"]
    );
    // The provenance key every replica shares comes from a mounted Secret.
    let key = config
        .provenance
        .signing_key
        .expect("one provenance key for all replicas")
        .display()
        .to_string();
    let deployment = gateway_deployment();
    let container = gateway_container(&deployment);
    let mount = seq(&container["volumeMounts"])
        .iter()
        .find(|m| key.starts_with(text(&m["mountPath"])))
        .unwrap_or_else(|| panic!("nothing mounted at {key}"))
        .clone();
    let volumes = seq(&deployment["spec"]["template"]["spec"]["volumes"]);
    let volume = volumes
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the key's volume");
    assert!(volume["secret"]["secretName"].is_string(), "{volume:?}");
}

#[test]
fn the_service_and_the_disruption_budget_select_the_gateway_pods() {
    let deployment = gateway_deployment();
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        let selector = selector.as_mapping().expect("a label selector");
        !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
    };
    let service = object("Service", Some("countersign"));
    assert!(selects(&service["spec"]["selector"]));
    let container = gateway_container(&deployment);
    for port in seq(&service["spec"]["ports"]) {
        container_port(&container, &port["targetPort"]);
    }
    let pdb = object("PodDisruptionBudget", None);
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"]));
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    let replicas = deployment["spec"]["replicas"].as_u64().expect("replicas");
    assert!(
        min >= 1 && min < replicas,
        "minAvailable {min} of {replicas}"
    );
}

#[test]
fn redis_refuses_to_evict_and_keeps_no_stale_state() {
    let statefulset = object("StatefulSet", None);
    let container = &seq(&statefulset["spec"]["template"]["spec"]["containers"])[0];
    let args: Vec<&str> = seq(&container["args"]).iter().map(text).collect();
    let value = |flag: &str| {
        let at = args
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("{flag} not set"));
        args[at + 1]
    };
    assert_eq!(value("--maxmemory-policy"), "noeviction");
    assert_eq!(value("--appendonly"), "no");
    assert_eq!(value("--save"), "");
    let policy = object("NetworkPolicy", None);
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        statefulset["spec"]["template"]["metadata"]["labels"]
    );
}

// ───────────────────────────── docker-compose ─────────────────────────────

fn compose() -> Value {
    let mut docs = documents(&deploy("docker-compose.yml"));
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

/// `(host path relative to deploy/, container path)` of a service's bind mounts.
fn bind_mounts(service: &Value) -> Vec<(String, String)> {
    service["volumes"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let mut parts = text(v).split(':');
            let host = parts.next().expect("host path");
            let container = parts.next().expect("container path");
            let host = host
                .strip_prefix("./")
                .expect("bind mounts are relative to deploy/");
            (host.to_string(), container.to_string())
        })
        .collect()
}

#[test]
fn compose_runs_two_gateways_redis_prometheus_and_grafana() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().map(text).collect();
    for needed in ["redis", "prometheus", "grafana"] {
        assert!(names.contains(&needed), "no {needed} service in {names:?}");
    }
    let gateways: BTreeMap<&str, &Value> = services
        .iter()
        .filter(|(_, s)| s["build"]["dockerfile"] == "deploy/Dockerfile")
        .map(|(name, s)| (text(name), s))
        .collect();
    assert_eq!(gateways.len(), 2, "{:?}", gateways.keys());
    for (name, gateway) in &gateways {
        assert!(deploy(text(&gateway["build"]["context"]))
            .join(text(&gateway["build"]["dockerfile"]))
            .is_file());
        let mounts = bind_mounts(gateway);
        let (host, _) = mounts
            .iter()
            .find(|(_, container)| container == "/etc/countersign/config.yaml")
            .unwrap_or_else(|| panic!("{name} mounts no config"));
        let config = parse_config(&read(&deploy(host)), host);
        let redis = redis_host(&config);
        assert!(
            names.contains(&redis.as_str()),
            "{name}: store host {redis}"
        );
        for upstream in config.upstreams.values() {
            let host = upstream.address.split(':').next().unwrap_or_default();
            assert!(names.contains(&host), "{name}: upstream {host}");
        }
        let metrics = port_of(&config.metrics.expect("metrics listener").listen);
        let scrape = read(&deploy("prometheus/prometheus.yml"));
        assert!(
            scrape.contains(&format!("{name}:{metrics}")),
            "prometheus does not scrape {name}:{metrics}"
        );
    }
}

#[test]
fn every_file_compose_mounts_exists() {
    let compose = compose();
    let mut referenced = Vec::new();
    for (name, service) in compose["services"].as_mapping().expect("services") {
        for (host, _) in bind_mounts(service) {
            assert!(
                deploy(&host).exists(),
                "{}: {host} does not exist",
                text(name)
            );
            referenced.push(host);
        }
    }
    for file in OBSERVABILITY {
        assert!(
            referenced.iter().any(|r| r == file),
            "{file} is not mounted"
        );
    }
}

#[test]
fn every_config_under_deploy_parses() {
    let mut seen = 0;
    for entry in std::fs::read_dir(deploy("config")).expect("deploy/config") {
        let path = entry.expect("dir entry").path();
        parse_config(&read(&path), &path.display().to_string());
        seen += 1;
    }
    assert!(seen >= 1);
}

// ───────────────────────────── Dockerfile ─────────────────────────────

#[test]
fn the_dockerfile_builds_locked_in_stages_and_runs_non_root() {
    let dockerfile = read(&deploy("Dockerfile"));
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let from: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(from.len() >= 2, "multi-stage: {from:?}");
    assert!(dockerfile.contains("cargo build --release --locked"));
    let runtime = &dockerfile[dockerfile.rfind("\nFROM ").expect("a runtime stage")..];
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(uid != "root" && uid != "0", "USER {user}");
    let exposed: Vec<&str> = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(
        exposed.contains(&"8080") && exposed.contains(&"9464"),
        "{exposed:?}"
    );
    let json_list = |prefix: &str| -> Vec<String> {
        let line = runtime
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix}"));
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{prefix}{line}: {e}"))
    };
    let mut command = json_list("ENTRYPOINT ");
    command.extend(json_list("CMD "));
    assert_eq!(
        command,
        [
            "/usr/local/bin/countersign",
            "run",
            "--config",
            "/etc/countersign/config.yaml"
        ]
    );
    assert!(deploy("Dockerfile.dockerignore").is_file());
}
