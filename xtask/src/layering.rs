//! The crate map of the README, checked: each crate imports only the crates of ours it may.

#[cfg(test)]
mod tests {
    /// (crate, the crates of ours it may depend on).
    const ALLOWED: [(&str, &[&str]); 11] = [
        ("unetr-kernels", &[]),
        ("unetr-ops", &["unetr-kernels"]),
        ("unetr-testkit", &[]),
        ("unetr-alloc", &[]),
        ("unetr-vit", &["unetr-ops"]),
        ("unetr-decoder", &["unetr-ops"]),
        ("unetr-model", &["unetr-ops", "unetr-vit", "unetr-decoder"]),
        ("unetr-data", &[]),
        ("unetr-infer", &["unetr-model", "unetr-data"]),
        ("unetr-train", &["unetr-ops", "unetr-model", "unetr-data", "unetr-infer"]),
        ("unetr-cli", &["unetr-data", "unetr-model", "unetr-infer", "unetr-train", "unetr-alloc"]),
    ];

    #[test]
    fn every_crate_imports_only_what_the_crate_map_allows() {
        let root = crate::repo_root().join("crates");
        let mut seen = 0;
        for e in std::fs::read_dir(&root).unwrap() {
            let dir = e.unwrap().path();
            let name = dir.file_name().unwrap().to_string_lossy().to_string();
            let toml: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap();
            let (_, allowed) = ALLOWED.iter().find(|(c, _)| *c == name).unwrap_or_else(|| panic!("{name} is not in the README's crate map"));
            let mut deps = Vec::new();
            for sec in ["dependencies", "build-dependencies"] {
                if let Some(t) = toml.get(sec).and_then(|v| v.as_table()) {
                    deps.extend(t.keys().cloned());
                }
            }
            if let Some(targets) = toml.get("target").and_then(|v| v.as_table()) {
                for t in targets.values() {
                    if let Some(d) = t.get("dependencies").and_then(|v| v.as_table()) {
                        deps.extend(d.keys().cloned());
                    }
                }
            }
            for d in deps.iter().filter(|d| d.starts_with("unetr-")) {
                assert!(allowed.contains(&d.as_str()), "{name} depends on {d}, which the crate map does not allow");
            }
            seen += 1;
        }
        assert_eq!(seen, ALLOWED.len(), "every crate of the map exists");
    }
}
