//! Golden files: `fixtures/policy/<case>/spec.json` (a PolicySpec) → the
//! nft JSON document of a full apply onto an empty node, byte for byte in
//! `fixtures/policy/<case>/ruleset.json`. `UPDATE_GOLDENS=1 cargo test -p
//! reconcilers --test policy_golden` rewrites them (review the diff).

use reconcilers::policy::{plan, render, simulate, to_nft, PolicySpec};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policy")
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures/policy exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("spec.json").is_file())
        .collect();
    v.sort();
    v
}

/// The golden text of one case: pretty JSON and a final newline.
fn render_case(dir: &Path) -> String {
    let spec: PolicySpec =
        serde_json::from_str(&std::fs::read_to_string(dir.join("spec.json")).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let desired = render(&spec).unwrap();
    let actions = plan(&desired, None);
    assert_eq!(
        simulate(None, &actions).unwrap(),
        Some(desired),
        "{}: the full create reaches the desired table",
        dir.display()
    );
    let mut text = serde_json::to_string_pretty(&to_nft(&actions)).unwrap();
    text.push('\n');
    text
}

#[test]
fn goldens_match() {
    let update = std::env::var("UPDATE_GOLDENS").is_ok_and(|v| v == "1");
    let cases = cases();
    let names: Vec<String> = cases
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["empty", "one-endpoint-host-only", "six-endpoints-netgroups"] {
        assert!(names.iter().any(|n| n == want), "missing case {want}");
    }
    let mut stale = vec![];
    for dir in &cases {
        let got = render_case(dir);
        let path = dir.join("ruleset.json");
        if update {
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "goldens differ (UPDATE_GOLDENS=1 to rewrite, then review the diff): {stale:?}"
    );
}
