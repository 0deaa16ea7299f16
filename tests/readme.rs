//! The README's rule-language example is real: with the shipped `airlock.yaml`, its
//! own `tests:` pass through `airlock rules test`.

mod common;
use common::*;

#[test]
fn the_readme_rule_example_passes_its_own_tests() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("## Rule language")
        .nth(1)
        .expect("a Rule language section");
    let example = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a yaml example in the Rule language section");
    let cases = example.matches("expect:").count();
    assert!(cases >= 2, "the example has tests:\n{example}");

    let ws = Workspace::new();
    let shipped = std::fs::read_to_string(root.join("airlock.yaml")).unwrap();
    let cfg = ws.write("airlock.yaml", &shipped);
    ws.write("rules/example.yaml", example);
    let (code, out, err) = run_cli(&["rules", "test", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l == format!("{cases} passed, 0 failed")),
        "{out}"
    );
    let (code, out, err) = run_cli(&["rules", "check", "-c", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
}
