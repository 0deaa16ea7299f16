//! Loading: reading the rule files a config names, compiling every rule, collecting
//! every error (`file:line:col`) and warning, and fingerprinting what was loaded as the
//! rule set's version. This is the only part of `rules` that reads files; it runs at
//! start, on reload and in the CLI, never per request.

use super::check::{self, Shadowing};
use super::compile::Compiler;
use super::decide::RuleSet;
use super::raw;
use super::rule::{Rule, Verdict};
use super::testing;
use crate::config::{Config, Diagnostic, Diagnostics, Mode, Source};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A loaded rule set with what it was made from.
#[derive(Debug, Clone)]
pub struct LoadedRules {
    /// The compiled rules.
    pub set: RuleSet,
    /// The `tests:` blocks, with the file and rule they came from.
    pub tests: Vec<testing::RuleTest>,
    /// Everything `rules check` warns about, as `file:line:col: warning: …`.
    pub warnings: Vec<Diagnostic>,
    /// The rule files read, in load order.
    pub files: Vec<PathBuf>,
}

/// The YAML files a `rules:` setting names: the file itself, or every `*.yaml` /
/// `*.yml` directly in the folder, sorted by name.
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostics> {
    if path.is_dir() {
        let rd = std::fs::read_dir(path)
            .map_err(|e| one(path, format!("cannot read rules folder: {e}")))?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml") | Some("yml")
                    )
            })
            .collect();
        files.sort();
        Ok(files)
    } else if path.is_file() {
        Ok(vec![path.to_path_buf()])
    } else {
        Err(one(path, "rules: no such file or folder".into()))
    }
}

fn one(file: &Path, message: String) -> Diagnostics {
    Diagnostics(vec![Diagnostic {
        file: file.to_path_buf(),
        line: 1,
        col: 1,
        message,
    }])
}

/// Loads the rules the config points at (an empty set when it names none).
pub fn load(cfg: &Config) -> Result<LoadedRules, Diagnostics> {
    let files = match &cfg.rules {
        Some(p) => rule_files(p)?,
        None => Vec::new(),
    };
    load_files(cfg, &files)
}

/// Loads the given rule files against a config.
pub fn load_files(cfg: &Config, files: &[PathBuf]) -> Result<LoadedRules, Diagnostics> {
    let mut errs = Vec::new();
    let mut warnings = Vec::new();
    let mut rules = Vec::new();
    let mut regexes = Vec::new();
    let mut tests = Vec::new();
    let mut shadowing = Shadowing::default();
    let mut texts = Vec::new();
    for file in files {
        let src = match Source::read(file) {
            Ok(s) => s,
            Err(d) => {
                errs.extend(d.0);
                continue;
            }
        };
        let raw: raw::RawRuleFile = match serde_yaml::from_str(&src.text) {
            Ok(r) => r,
            Err(e) => {
                errs.push(src.yaml_error(&e));
                continue;
            }
        };
        for r in raw.rules {
            let anchor = format!("name: {}", r.name);
            if rules.iter().any(|x: &Rule| x.name == r.name) {
                errs.push(src.diag_at(
                    None,
                    &anchor,
                    format!("rule {:?} is defined twice", r.name),
                ));
                continue;
            }
            let mut c = Compiler {
                src: &src,
                anchor: &anchor,
                rule: &r.name,
                errs: Vec::new(),
                warnings: Vec::new(),
            };
            if let Some((rule, paths)) = c.rule(cfg, &r) {
                warnings.extend(shadowing.check(&src, &anchor, &r));
                warnings.extend(check::rule_warnings(&src, &anchor, &r));
                for (n, t) in r.tests.iter().enumerate() {
                    tests.push(testing::RuleTest::from_raw(&src, &r.name, n, t));
                }
                rules.push(rule);
                regexes.push(paths);
            }
            errs.extend(c.errs);
            warnings.extend(c.warnings);
        }
        texts.push((relative_name(cfg.rules.as_deref(), file), src.text));
    }
    if !errs.is_empty() {
        return Err(Diagnostics(errs));
    }
    warnings.extend(check::config_warnings(cfg));
    let default = if cfg.default_allow {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    let version = rules_version(cfg.mode, default, &mut texts);
    let set = RuleSet::new(rules, regexes, default, version).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: files.first().cloned().unwrap_or_default(),
            line: 1,
            col: 1,
            message: format!("path patterns do not compile together: {e}"),
        }])
    })?;
    Ok(LoadedRules {
        set,
        tests,
        warnings,
        files: files.to_vec(),
    })
}

/// A rule file's name for the version: its path relative to the rules folder (or, for
/// a single rules file or a file outside the folder, its path as given).
fn relative_name(root: Option<&Path>, file: &Path) -> String {
    let rel = root
        .and_then(|r| {
            if r.is_dir() {
                file.strip_prefix(r).ok()
            } else {
                file.file_name().map(Path::new)
            }
        })
        .unwrap_or(file);
    rel.to_string_lossy().replace('\\', "/")
}

/// The version of a rule set: the first 16 hex digits of a SHA-256 over each file's
/// relative name and contents (sorted by name, each length-prefixed so no two inputs
/// read the same), then the mode and the default verdict.
pub fn rules_version(mode: Mode, default: Verdict, files: &mut [(String, String)]) -> String {
    files.sort();
    let mut h = Sha256::new();
    for (name, text) in files.iter() {
        for part in [name.as_bytes(), text.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    let mode = match mode {
        Mode::Enforce => "enforce",
        Mode::Observe => "observe",
    };
    h.update(format!("mode={mode}\ndefault={}\n", default.as_str()).as_bytes());
    let mut hex = hex::encode(h.finalize());
    hex.truncate(16);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "listen: 127.0.0.1:0\nstore: sqlite://airlock.db\nrules: rules/\nupstreams:\n  - name: api\n    prefix: /api\n    url: http://127.0.0.1:9\nreviewers:\n  - id: bob@example.com\n    groups: [sre]\n";

    const RULES: &str = r#"rules:
  - name: with-reason
    when: {method: DELETE}
    then: approve
    approval: {approvers: [group:sre], require_reason: true}
  - name: without
    when: {method: POST}
    then: approve
    approval: {approvers: [group:sre]}
"#;

    /// A folder with `airlock.yaml` (`CONFIG` plus `extra`) and the given rule files.
    fn folder(extra: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rules")).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join("rules").join(name), text).unwrap();
        }
        let file = dir.path().join("airlock.yaml");
        let text = format!("{CONFIG}{extra}");
        std::fs::write(&file, &text).unwrap();
        let cfg = Config::parse(&Source { file, text }).unwrap();
        (dir, cfg)
    }

    fn version(extra: &str, files: &[(&str, &str)]) -> String {
        let (_dir, cfg) = folder(extra, files);
        load(&cfg).unwrap().set.version
    }

    #[test]
    fn require_reason_is_read_and_defaults_to_false() {
        let (_dir, cfg) = folder("", &[("r.yaml", RULES)]);
        let set = load(&cfg).unwrap().set;
        let policy = |i: usize| set.rules[i].approval.as_ref().unwrap().require_reason;
        assert!(policy(0));
        assert!(!policy(1));

        let (_dir, cfg) = folder("", &[("r.yaml", &RULES.replace("true}", "yes please}"))]);
        let err = load(&cfg).unwrap_err().to_string();
        assert!(err.contains("r.yaml:5:"), "{err}");
    }

    #[test]
    fn remind_and_escalate_are_read_and_checked() {
        let rules = r#"rules:
  - name: slow
    when: {method: DELETE}
    then: approve
    approval:
      approvers: [group:sre]
      remind: 10m
      escalate: {after: 30m, to: [group:leads]}
"#;
        let (_dir, cfg) = folder("", &[("r.yaml", rules)]);
        let loaded = load(&cfg).unwrap();
        let p = loaded.set.rules[0].approval.clone().unwrap();
        assert_eq!(p.remind, Some(600));
        let e = p.escalate.clone().unwrap();
        assert_eq!(
            (e.after, e.to.clone()),
            (1800, vec!["group:leads".to_string()])
        );
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.to_string().contains("escalate.to")),
            "nobody is in group:leads: a warning, not an error"
        );
        // Before the escalation only sre counts; after it leads count for each requirement.
        let before = p.requirements_after(std::time::Duration::from_secs(1799));
        assert_eq!(before[0].approvers, ["group:sre"]);
        let after = p.requirements_after(std::time::Duration::from_secs(1800));
        assert_eq!(after[0].approvers, ["group:sre", "group:leads"]);

        for bad in [
            "remind: soon",
            "remind: 0s",
            "escalate: {after: later, to: [group:sre]}",
            "escalate: {after: 1m, to: []}",
        ] {
            let text = rules.replace("      remind: 10m\n", "").replace(
                "      escalate: {after: 30m, to: [group:leads]}\n",
                &format!("      {bad}\n"),
            );
            let (_dir, cfg) = folder("", &[("r.yaml", &text)]);
            let err = load(&cfg).unwrap_err().to_string();
            assert!(err.contains("r.yaml:"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_same_files_give_the_same_version() {
        let files = [("a.yaml", RULES), ("b.yaml", "rules: []\n")];
        let v = version("", &files);
        assert_eq!(v.len(), 16, "{v}");
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()), "{v}");
        // Another folder with the same files: the version does not depend on where.
        assert_eq!(version("", &files), v);
        // Configuration outside mode and default does not change it.
        assert_eq!(version("workers: 2\n", &files), v);
    }

    #[test]
    fn the_version_changes_with_the_rules_the_mode_and_the_default() {
        let files = [("a.yaml", RULES), ("b.yaml", "rules: []\n")];
        let v = version("", &files);
        let edited = RULES.replace("method: POST", "method: PUT");
        assert_ne!(version("", &[("a.yaml", &edited), files[1]]), v);
        // The same text under another name is another rule set.
        assert_ne!(version("", &[("c.yaml", RULES), files[1]]), v);
        assert_ne!(version("", &files[..1]), v);
        assert_ne!(version("mode: observe\n", &files), v);
        assert_ne!(version("default: deny\n", &files), v);
    }
}
