//! `crds/` is generated from the Rust types by `iotstamp crdgen`. This fails when they drift, so a
//! change to a type cannot ship without its CRD.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut expected_files = Vec::new();
    for crd in iotstamp_api::crds() {
        let name = iotstamp_api::crd_file_name(&crd);
        let want = iotstamp_api::crd_yaml(&crd).unwrap();
        let have = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("crds/{name} is missing ({e}); run `cargo run -- crdgen`"));
        assert!(
            have == want,
            "crds/{name} is out of date with api/src; run `cargo run -- crdgen`"
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
    assert_eq!(present, expected_files, "crds/ holds files no type generates");
}
