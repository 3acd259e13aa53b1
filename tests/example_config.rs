//! `config/example.yaml` documents every key the config format has: each field of the `File*`
//! structs of src/config/file.rs (the serde mirror of the YAML) appears in it as `key:`, set or in
//! a comment.

const SCHEMA: &str = include_str!("../src/config/file.rs");
const EXAMPLE: &str = include_str!("../config/example.yaml");

/// The YAML key of each field of each `struct File... { ... }`.
fn schema_keys() -> Vec<(String, String)> {
    let mut keys = Vec::new();
    let mut current: Option<String> = None;
    let mut rename: Option<String> = None;
    for line in SCHEMA.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("struct File") {
            if rest.ends_with('{') {
                current = Some(format!("File{}", rest.trim_end_matches('{').trim()));
            }
            continue;
        }
        let Some(name) = &current else { continue };
        if trimmed == "}" {
            current = None;
            continue;
        }
        if let Some(r) = trimmed.strip_prefix("#[serde(rename = \"") {
            rename = r.split('"').next().map(str::to_owned);
            continue;
        }
        if let Some((field, _)) = trimmed.split_once(':') {
            let field = field.trim_start_matches("pub ").trim();
            if !field.is_empty() && field.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.push((
                    name.clone(),
                    rename.take().unwrap_or_else(|| field.to_owned()),
                ));
            }
        }
    }
    keys
}

#[test]
fn every_config_key_is_documented_in_the_example() {
    let keys = schema_keys();
    assert!(keys.len() > 30, "the schema parse found only {keys:?}");
    let missing: Vec<String> = keys
        .iter()
        .filter(|(_, key)| {
            !EXAMPLE.contains(&format!("{key}:")) && !EXAMPLE.contains(&format!("`{key}`"))
        })
        .map(|(s, key)| format!("{s}.{key}"))
        .collect();
    assert!(
        missing.is_empty(),
        "config/example.yaml does not mention: {missing:?}"
    );
}
