//! `normalize_path` never panics; what it returns is its own normal form and never
//! holds a sequence an upstream could read differently (`//`, `/./`, `/../`, `%2F`,
//! `%5C`, `%00`, a trailing `/.` or `/..`).
#![no_main]

use airlock::http::normalize::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(out) = normalize_path(raw) else {
        return;
    };
    assert!(out.starts_with('/'), "{raw:?} -> {out:?}");
    let upper = out.to_ascii_uppercase();
    for bad in ["//", "/./", "/../", "%2F", "%5C", "%00", "\\"] {
        assert!(!upper.contains(bad), "{raw:?} -> {out:?} holds {bad:?}");
    }
    assert!(
        !out.ends_with("/.") && !out.ends_with("/.."),
        "{raw:?} -> {out:?} ends in a dot segment"
    );
    assert!(
        out.bytes().all(|b| b.is_ascii() && !b.is_ascii_control()),
        "{raw:?} -> {out:?} holds a raw non-ASCII or control byte"
    );
    assert_eq!(
        normalize_path(&out).as_deref(),
        Ok(out.as_str()),
        "not idempotent for {raw:?}"
    );
});
