//! The config and rules loaders never panic on arbitrary YAML text, and every error
//! they report points at a line and column inside the text (`file:line:col`).
#![no_main]

use airlock::config::{Config, Diagnostics, LoadOptions, Source};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A folder of its own for this fuzzing process: the rules loader reads files.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("airlock-fuzz-loader-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

const CONFIG: &str = "listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nupstreams:\n  - name: api\n    prefix: /api\n    url: http://127.0.0.1:9\nreviewers:\n  - id: bob@example.com\n    groups: [sre]\nagents:\n  - id: deploy-bot\n    key: sha256:0000000000000000000000000000000000000000000000000000000000000000\n    owner: carol@example.com\n";

/// Every diagnostic names a place that exists in `text` (1-based; the column may be
/// one past the end of its line, where a parser reports "end of line", and the end of
/// the text may be reported as the start of the line after it). airlock's own
/// diagnostics count lines by `\n`; the YAML parser's also break lines at a lone `\r`,
/// NEL, LS and PS: a place is accepted when it exists under either count.
fn located(text: &str, errs: &Diagnostics) {
    assert!(!errs.0.is_empty(), "an error without a diagnostic");
    let by_newline: Vec<&str> = text.split('\n').collect();
    let yaml_text = text
        .replace("\r\n", "\n")
        .replace(['\r', '\u{85}', '\u{2028}', '\u{2029}'], "\n");
    let by_yaml: Vec<&str> = yaml_text.split('\n').collect();
    for d in &errs.0 {
        assert!(d.line >= 1 && d.col >= 1, "{d} for {text:?}");
        let exists = |lines: &[&str]| {
            (d.line == lines.len() + 1 && d.col == 1)
                || lines.get(d.line - 1).is_some_and(|l| d.col <= l.len() + 1)
        };
        assert!(
            exists(&by_newline) || exists(&by_yaml),
            "{d}: no such place in {text:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The input as an airlock.yaml.
    let src = Source {
        file: "airlock.yaml".into(),
        text: text.to_string(),
    };
    if let Err(e) = Config::parse_with(&src, LoadOptions::AUDIT) {
        located(text, &e);
    }
    // The input as a rule file under a fixed config.
    let file = dir().join("rules.yaml");
    std::fs::write(&file, text).unwrap();
    let cfg_src = Source {
        file: "airlock.yaml".into(),
        text: format!("{CONFIG}rules: {}\n", file.display()),
    };
    let cfg = Config::parse_with(&cfg_src, LoadOptions::AUDIT).expect("the fixed config loads");
    if let Err(e) = airlock::rules::load(&cfg) {
        located(text, &e);
    }
});
