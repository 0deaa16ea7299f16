//! Scalar values as written in config and rules files: durations (`15m`), byte sizes
//! (`10MiB`), `${VAR}` expansion, `sha256:` digests, upstream URLs and paths relative
//! to the config file.
//!
//! Each parser returns a message without a location; the caller adds `file:line:col`.
//! `${VAR}` left unset is an error, never an empty string.

use super::Target;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Parses a duration such as `15m`, `10s`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses a byte size such as `10MiB`, `512KiB`, `1MB`, `4096`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// Expands `${VAR}` from the environment. An unset variable is an error, never "".
pub fn expand_env(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid variable name ${{{name}}}"));
        }
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `sha256:` + 64 lowercase hex digits.
pub fn parse_digest(s: &str) -> Result<[u8; 32], String> {
    let hexpart = s
        .strip_prefix("sha256:")
        .ok_or_else(|| "expected sha256: followed by 64 lowercase hex digits".to_string())?;
    if hexpart.len() != 64
        || !hexpart
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err("expected sha256: followed by 64 lowercase hex digits".into());
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// `p` as an absolute path: relative paths are taken from `base` (the config file's folder).
pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// Parses an upstream `url:` (`http://…` or `https://…`, no query).
pub(super) fn parse_target(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid url {url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "url {url:?} must start with http://, https:// or be demo:"
            ))
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("url {url:?} has no host"))?;
    if uri.query().is_some() {
        return Err(format!("url {url:?} must not have a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(Target::Http {
        https,
        authority,
        base_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1 KiB"), Ok(1024));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1XB").is_err());
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn env_expansion_fails_on_unset() {
        std::env::set_var("AIRLOCK_TEST_SET", "v");
        assert_eq!(
            expand_env("a ${AIRLOCK_TEST_SET} b").as_deref(),
            Ok("a v b")
        );
        assert!(expand_env("${AIRLOCK_TEST_UNSET_XYZ}").is_err());
        assert!(expand_env("${oops").is_err());
    }
}
