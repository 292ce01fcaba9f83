//! `crds/` is generated from the Rust types by `iotstamp crdgen`. This fails when they drift, so a
//! change to a type cannot ship without its CRD.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    check_dir("crds");
}

/// Helm installs CRDs from its own `crds/` folder; it must hold the same files.
#[test]
fn helm_chart_crds_match_the_types() {
    check_dir("helm/iotstamp/crds");
}

fn check_dir(relative: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    let mut expected_files = Vec::new();
    for crd in iotstamp_api::crds() {
        let name = iotstamp_api::crd_file_name(&crd);
        let want = iotstamp_api::crd_yaml(&crd).unwrap();
        let have = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| {
            panic!("{relative}/{name} is missing ({e}); run `cargo run -- crdgen --out {relative}`")
        });
        assert!(
            have == want,
            "{relative}/{name} is out of date with api/src; run `cargo run -- crdgen --out {relative}`"
        );
        expected_files.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "{relative} holds files no type generates"
    );
}
