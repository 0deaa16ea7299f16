//! Request-path normalization (SPEC "Request path", step 3).
//!
//! This module owns exactly one decision: turning the path of a request URI, as the
//! client sent it (`uri.path()`: no query, no fragment), into the single canonical form
//! that the rules are matched against **and** that is forwarded upstream. Because both
//! sides get the same bytes, a rule can only be bypassed if the upstream reads that
//! canonical path differently from how the rules read it, so the canonical form is
//! chosen to leave an upstream nothing to reinterpret:
//!
//! * it always starts with `/`, never contains `//`, and has no `.` or `..` segments,
//!   so no upstream merges slashes or resolves dots again;
//! * percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, so
//!   `%2E%2E` cannot become `..` after matching and `%76m-7` is matched as `vm-7`;
//! * every other percent-encoding keeps its meaning and is written with uppercase hex
//!   (`%c3%a9` → `%C3%A9`); characters that may not appear raw in a URI path
//!   (non-ASCII, space, `"`, `<`, `>`, `[`, `]`, `^`, `` ` ``, `{`, `|`, `}`) are
//!   percent-encoded the same way;
//! * anything that cannot be made unambiguous is refused with a [`PathError`] (the
//!   caller answers `400 bad_path`): `%2F`, `%5C`, `%00`, literal backslashes, control
//!   characters (raw or encoded), malformed `%`, a percent-decoded path that is not
//!   UTF-8, a `..` above the root, and `.`/`..` segments carrying `;` parameters
//!   (`..;/`, which servlet containers strip and then resolve).
//!
//! It must **never** return a path that an upstream could read differently from what the
//! rules saw; when in doubt it fails closed (returns an error) instead of guessing.
//! It never clamps `..` at the root, never decodes `/`, `\` or any reserved character,
//! and never decodes twice: `%252F` stays `%252F`, and an upstream that decodes once
//! sees the literal text `%2F`, not a slash.
//!
//! Choices worth knowing:
//! * Repeated slashes are merged *before* dot segments are resolved, as nginx does:
//!   `/a//../b` → `/b`.
//! * A trailing slash is kept: `/a/b/` stays, `/a/b/.` → `/a/b/`, `/a/b/..` → `/a/`.
//! * `;` in an ordinary segment is kept as is (`/a;v=1/b`). An upstream that strips
//!   matrix parameters (Tomcat, Jetty, Spring) reads `/a;x/b` as `/a/b`; rules meant for
//!   such upstreams should match the segment with `*` or a regex.
//! * The result is idempotent: `normalize_path(&normalize_path(x)?) == normalize_path(x)`.
//! * Fast path: a path made only of characters that may stay as they are, with no `%`,
//!   no `//` and no `/.`, is returned after one scan and one allocation.

use thiserror::Error;

/// Why a request path was refused. Every variant means "answer `400 bad_path`".
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    /// The path is not empty and does not start with `/` (e.g. `*` or `a/b`).
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// A literal `\` anywhere in the path.
    #[error("backslash ('\\') in path")]
    Backslash,
    /// `%5C` / `%5c` anywhere in the path.
    #[error("encoded '\\' (%5C) in path")]
    EncodedBackslash,
    /// `%2F` / `%2f` anywhere in the path.
    #[error("encoded '/' (%2F) in path")]
    EncodedSlash,
    /// A literal NUL byte.
    #[error("NUL byte in path")]
    NulByte,
    /// `%00`.
    #[error("encoded NUL (%00) in path")]
    EncodedNul,
    /// A literal control character (0x01..=0x1F or 0x7F).
    #[error("control character 0x{0:02X} in path")]
    ControlCharacter(u8),
    /// A percent-encoded control character (`%01`..`%1F`, `%7F`).
    #[error("encoded control character (%{0:02X}) in path")]
    EncodedControlCharacter(u8),
    /// A `%` not followed by two hexadecimal digits.
    #[error("'%' not followed by two hex digits in path")]
    InvalidPercentEncoding,
    /// The fully percent-decoded path is not valid UTF-8 (e.g. `%FF`, a lone `%C3`).
    #[error("percent-decoded path is not valid UTF-8")]
    InvalidUtf8,
    /// A `..` segment that would climb above the root.
    #[error("'..' climbs above the root")]
    AboveRoot,
    /// A `.` or `..` segment followed by `;` parameters (`..;`, `.%3B`).
    #[error("'.' or '..' segment with ';' parameters in path")]
    DotSegmentWithParameters,
    /// `;` (or `%3B`) in a path whose upstream does not allow path parameters.
    #[error("';' path parameters in path (servlet containers strip them; this upstream does not allow them)")]
    PathParameters,
    /// A literal `?` or `#`: the query or fragment was passed as part of the path.
    #[error("'?' or '#' in path (query or fragment passed as path)")]
    QueryOrFragment,
}

/// Byte classes for the single scan over the raw path.
const LITERAL: u8 = 0; // may stay as is: unreserved, sub-delims, ':', '@', '/'
const PERCENT: u8 = 1; // '%'
const ENCODE: u8 = 2; // must be percent-encoded in the canonical form
const BACKSLASH: u8 = 3;
const NUL: u8 = 4;
const CONTROL: u8 = 5;
const QUERY_OR_FRAGMENT: u8 = 6;

const CLASS: [u8; 256] = build_class_table();

const fn build_class_table() -> [u8; 256] {
    let mut t = [ENCODE; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = match b {
            0x00 => NUL,
            0x01..=0x1F | 0x7F => CONTROL,
            b'\\' => BACKSLASH,
            b'%' => PERCENT,
            b'?' | b'#' => QUERY_OR_FRAGMENT,
            b'/' | b':' | b'@' => LITERAL,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => LITERAL,
            _ if is_unreserved(b) => LITERAL,
            _ => ENCODE,
        };
        i += 1;
    }
    t
}

/// RFC 3986 `unreserved`: ALPHA / DIGIT / "-" / "." / "_" / "~".
const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_encoded(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0x0F)]));
}

/// Normalizes the path of a request URI (see the module documentation).
///
/// `raw` is the path as received, without query or fragment. An empty path becomes `/`.
/// The returned path is what rules must be matched against and what must be forwarded.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    normalize(raw, false)
}

/// [`normalize_path`], but `%2F` is kept (as `%2F`) instead of refused: for routing,
/// before the upstream's `encoded_slash` setting is known. The caller refuses a kept
/// `%2F` the upstream does not allow.
pub fn normalize_path_keeping_encoded_slash(raw: &str) -> Result<String, PathError> {
    normalize(raw, true)
}

fn normalize(raw: &str, keep_encoded_slash: bool) -> Result<String, PathError> {
    if raw.is_empty() {
        return Ok(String::from("/"));
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_already_canonical(raw.as_bytes()) {
        return Ok(raw.to_owned());
    }
    let canonical = canonicalize_encoding(raw, keep_encoded_slash)?;
    resolve_segments(&canonical)
}

/// Whether a canonical path holds `;` path parameters (literal or `%3B`).
pub fn has_path_params(path: &str) -> bool {
    path.contains(';') || path.contains("%3B")
}

/// Whether a canonical path holds an encoded slash.
pub fn has_encoded_slash(path: &str) -> bool {
    path.contains("%2F")
}

/// The other readings an upstream may take of a canonical path: percent-decoded (as
/// Go, Flask and Spring route; `%2F` becomes `/` and dot segments that makes are
/// resolved again), and with `;` parameters stripped from every segment (as servlet
/// containers do). Empty for a path with no `%` and no `;`. A reading that climbs
/// above the root is refused.
pub fn readings(path: &str) -> Result<Vec<String>, PathError> {
    let mut out: Vec<String> = Vec::new();
    let last = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    if !path.contains('%') && !path.contains(';') && !last.contains('.') && !path.contains(".php/")
    {
        return Ok(out);
    }
    let push = |s: String, out: &mut Vec<String>| {
        if s != path && !out.contains(&s) {
            out.push(s);
        }
    };
    if path.contains('%') {
        let decoded: Vec<u8> = percent_decode(path.as_bytes());
        let decoded = String::from_utf8(decoded).map_err(|_| PathError::InvalidUtf8)?;
        let decoded = resolve_segments(&decoded)?;
        push(decoded, &mut out);
    }
    let mut stripped = Vec::new();
    for r in std::iter::once(path).chain(out.iter().map(String::as_str)) {
        if r.contains(';') {
            let s: Vec<&str> = r
                .split('/')
                .map(|seg| seg.split(';').next().unwrap_or(""))
                .collect();
            stripped.push(resolve_segments(&s.join("/"))?);
        }
    }
    for s in stripped {
        push(s, &mut out);
    }
    // What routers strip: a format suffix on the last segment (Rails' `(.:format)`,
    // Spring's suffix match: `/users.json` is `/users`), trailing dots (`/users.`), and
    // a front controller (`/index.php/users` is `/users` to PHP behind nginx).
    let mut more = Vec::new();
    for r in std::iter::once(path).chain(out.iter().map(String::as_str)) {
        if let Some(s) = strip_suffix(r) {
            more.push(s);
        }
        if let Some(s) = strip_front_controller(r) {
            if let Some(t) = strip_suffix(&s) {
                more.push(t);
            }
            more.push(s);
        }
    }
    for s in more {
        push(s, &mut out);
    }
    Ok(out)
}

/// `path` without a `.ext` (letters and digits, up to 8) or trailing dots on its last
/// segment; a trailing `/` is kept.
fn strip_suffix(path: &str) -> Option<String> {
    let trailing = path.ends_with('/') && path.len() > 1;
    let body = if trailing {
        &path[..path.len() - 1]
    } else {
        path
    };
    let cut = body.rfind('/')?;
    let seg = &body[cut + 1..];
    let dot = seg.rfind('.')?;
    let ext = &seg[dot + 1..];
    let stem = if ext.is_empty() {
        seg.trim_end_matches('.')
    } else if ext.len() <= 8 && ext.bytes().all(|b| b.is_ascii_alphanumeric()) {
        &seg[..dot]
    } else {
        return None;
    };
    if stem.is_empty() || stem == "." {
        return None;
    }
    let mut s = format!("{}{stem}", &body[..=cut]);
    if trailing {
        s.push('/');
    }
    Some(s)
}

/// `path` without a leading `/NAME.php` segment.
fn strip_front_controller(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let (first, tail) = rest.split_once('/')?;
    (first.len() > 4 && first.to_ascii_lowercase().ends_with(".php")).then(|| format!("/{tail}"))
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            if let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// True when `bytes` (starting with `/`) holds only characters that stay as they are,
/// no `%`, no `//` and no `/.`: such a path is its own canonical form.
fn is_already_canonical(bytes: &[u8]) -> bool {
    let mut prev_slash = false;
    for &b in bytes {
        if CLASS[usize::from(b)] != LITERAL || (prev_slash && (b == b'/' || b == b'.')) {
            return false;
        }
        prev_slash = b == b'/';
    }
    true
}

/// The full algorithm; `raw` is non-empty and starts with `/`.
#[cfg(test)]
fn normalize_slow(raw: &str) -> Result<String, PathError> {
    let canonical = canonicalize_encoding(raw, false)?;
    resolve_segments(&canonical)
}

/// Pass 1: validates every byte and percent-encoding, decodes encoded unreserved
/// characters, uppercases the hex of every other encoding, encodes characters that may
/// not appear raw, and checks that the fully decoded path is UTF-8.
fn canonicalize_encoding(raw: &str, keep_encoded_slash: bool) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 2);
    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match CLASS[usize::from(b)] {
            LITERAL => {
                out.push(char::from(b));
                decoded.push(b);
                i += 1;
            }
            PERCENT => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let v = match (hi, lo) {
                    (Some(hi), Some(lo)) => (hi << 4) | lo,
                    _ => return Err(PathError::InvalidPercentEncoding),
                };
                match v {
                    b'/' if keep_encoded_slash => push_encoded(&mut out, v),
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    0x00 => return Err(PathError::EncodedNul),
                    0x01..=0x1F | 0x7F => return Err(PathError::EncodedControlCharacter(v)),
                    _ if is_unreserved(v) => out.push(char::from(v)),
                    _ => push_encoded(&mut out, v),
                }
                decoded.push(v);
                i += 3;
            }
            ENCODE => {
                push_encoded(&mut out, b);
                decoded.push(b);
                i += 1;
            }
            BACKSLASH => return Err(PathError::Backslash),
            NUL => return Err(PathError::NulByte),
            CONTROL => return Err(PathError::ControlCharacter(b)),
            _ => return Err(PathError::QueryOrFragment),
        }
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err(PathError::InvalidUtf8);
    }
    Ok(out)
}

/// Pass 2 (RFC 3986 5.2.4, with empty segments merged first): `path` starts with `/`
/// and contains only canonical encodings.
fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut out = String::with_capacity(path.len());
    // Offset in `out` of the '/' that starts each kept segment.
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing_slash = false;
    let mut segments = path.get(1..).unwrap_or("").split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "" | "." => trailing_slash = last,
            ".." => {
                let start = starts.pop().ok_or(PathError::AboveRoot)?;
                out.truncate(start);
                trailing_slash = last;
            }
            _ => {
                reject_dot_segment_with_parameters(segment)?;
                starts.push(out.len());
                out.push('/');
                out.push_str(segment);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Refuses `.;x`, `..;x`, `.%3Bx`, `..%3Bx`: servers that strip `;` parameters from
/// segments would turn them into dot segments after the rules were matched.
fn reject_dot_segment_with_parameters(segment: &str) -> Result<(), PathError> {
    let rest = segment
        .strip_prefix("..")
        .or_else(|| segment.strip_prefix('.'));
    match rest {
        Some(rest) if rest.starts_with(';') || rest.starts_with("%3B") => {
            Err(PathError::DotSegmentWithParameters)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: &str = "/v1/projects/p1/instances/vm-7";

    #[test]
    fn plain_paths_are_unchanged() {
        for p in [
            "/",
            TARGET,
            "/a/b/",
            "/v1/projects/p1/instances/vm-7:start",
            "/a:b@c!$&'()*+,;=/d",
            "/a/.b/..c/.../d",
            "/.well-known/acme",
            "/caf%C3%A9",
            "/a%20b",
            "/a/%252F",
            "/a%3Fb%23c",
            "/~user/file_name-1.txt",
        ] {
            assert_eq!(normalize_path(p).as_deref(), Ok(p), "input {p:?}");
        }
    }

    #[test]
    fn variants_of_target_normalize_to_target() {
        for p in [
            "/v1//projects/p1/instances/vm-7",
            "//v1/projects/p1/instances/vm-7",
            "/v1/projects/p1/instances//vm-7",
            "/v1///projects//p1//instances///vm-7",
            "/v1/projects/./p1/instances/vm-7",
            "/./v1/projects/p1/instances/vm-7",
            "/v1/x/../projects/p1/instances/vm-7",
            "/v1/a/b/../../projects/p1/instances/vm-7",
            "/v1/projects/p1/instances/x/../vm-7",
            "/v1/projects/p1/instances/%76m-7",
            "/v1/projects/p1/%69nstances/vm-7",
            "/v1/projects/p1/instances/vm%2D7",
            "/v1/projects/p1/instances/vm%2d7",
            "/v1/projects/p1/instances/vm%2D%37",
            "/v1/projects/%70%31/instances/vm-7",
            "/v1/%2e/projects/p1/instances/vm-7",
            "/v1/%2E/projects/p1/instances/vm-7",
            "/v1/projects/p1/x/%2E%2E/instances/vm-7",
            "/v1/projects/p1/x/.%2e/instances/vm-7",
            "/v1/projects/p1/x/%2e./instances/vm-7",
            "/%76%31/projects/p1/instances/vm-7",
            "/%2E/v1/projects/p1/instances/vm%2D7",
            "/v1/projects/p1/instances/%7E/../vm-7",
            "/v1/projects/p1/instances/%5F%5f/../vm-7",
            "/v1///projects//p1/./instances/../instances/vm-7",
            "/v1/projects/p1/instances/vm-7/x/..",
        ] {
            let want = if p.ends_with("/..") {
                format!("{TARGET}/")
            } else {
                TARGET.to_owned()
            };
            assert_eq!(normalize_path(p), Ok(want), "input {p:?}");
        }
    }

    #[test]
    fn rewritten_paths() {
        for (p, want) in [
            ("", "/"),
            ("/.", "/"),
            ("//", "/"),
            ("///", "/"),
            ("/a/..", "/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/b/%2e", "/a/b/"),
            ("/a/b/%2E%2E", "/a/"),
            ("/a//", "/a/"),
            ("/a/b/./", "/a/b/"),
            ("/a//../b", "/b"),
            ("/a/./../b/", "/b/"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/a b", "/a%20b"),
            ("/{\"k\":[1]}", "/%7B%22k%22:%5B1%5D%7D"),
            ("/a|b^c`d<e>", "/a%7Cb%5Ec%60d%3Ce%3E"),
            ("/a%3b", "/a%3B"),
            ("/a%252f", "/a%252f"),
            ("/%41%42%43", "/ABC"),
            ("/%7e%2D%5F%2e", "/~-_."),
            ("/a%3ab", "/a%3Ab"),
        ] {
            assert_eq!(normalize_path(p).as_deref(), Ok(want), "input {p:?}");
        }
    }

    #[test]
    fn refused_paths() {
        use PathError::*;
        for (p, want) in [
            ("/v1/projects/p1%2Finstances/vm-7", EncodedSlash),
            ("/v1/projects/p1%2finstances/vm-7", EncodedSlash),
            ("/v1/..%2f..%2fadmin", EncodedSlash),
            ("/v1\\projects", Backslash),
            ("\\v1", NotAbsolute),
            ("/v1/%5Cprojects", EncodedBackslash),
            ("/v1/%5cprojects", EncodedBackslash),
            ("/v1/%00", EncodedNul),
            ("/v1/\0", NulByte),
            ("/v1/a\nb", ControlCharacter(0x0A)),
            ("/v1/a\rb", ControlCharacter(0x0D)),
            ("/v1/\x7f", ControlCharacter(0x7F)),
            ("/v1/a\tb", ControlCharacter(0x09)),
            ("/v1/%0A", EncodedControlCharacter(0x0A)),
            ("/v1/%0d%0a", EncodedControlCharacter(0x0D)),
            ("/v1/%7f", EncodedControlCharacter(0x7F)),
            ("/..", AboveRoot),
            ("/../a", AboveRoot),
            ("/a/../../b", AboveRoot),
            ("/%2e%2e/x", AboveRoot),
            ("/%2E./x", AboveRoot),
            ("//../x", AboveRoot),
            ("/a/b/../../..", AboveRoot),
            ("/v1/%G1", InvalidPercentEncoding),
            ("/v1/%1G", InvalidPercentEncoding),
            ("/v1/%", InvalidPercentEncoding),
            ("/v1/%1", InvalidPercentEncoding),
            ("/v1/%%32%46", InvalidPercentEncoding),
            ("/v1/%u002f", InvalidPercentEncoding),
            ("/v1/%ff", InvalidUtf8),
            ("/v1/%c3", InvalidUtf8),
            ("/v1/%C3/%A9", InvalidUtf8),
            ("/v1/%C0%AF", InvalidUtf8),
            ("/v1/%ED%A0%80", InvalidUtf8),
            ("/%C3/../x", InvalidUtf8),
            ("/v1/%C3©", InvalidUtf8),
            ("v1/projects", NotAbsolute),
            ("*", NotAbsolute),
            ("%2Fv1", NotAbsolute),
            ("/a?b", QueryOrFragment),
            ("/a#b", QueryOrFragment),
            ("/x/..;/admin", DotSegmentWithParameters),
            ("/x/.;/admin", DotSegmentWithParameters),
            ("/x/..;jsessionid=1/admin", DotSegmentWithParameters),
            ("/x/..%3B/admin", DotSegmentWithParameters),
            ("/x/%2e%2e%3bfoo/admin", DotSegmentWithParameters),
            ("/..;", DotSegmentWithParameters),
        ] {
            assert_eq!(normalize_path(p), Err(want), "input {p:?}");
        }
    }

    #[test]
    fn readings_routers_take() {
        let r = readings("/v1/admin/users.json").unwrap();
        assert!(r.contains(&"/v1/admin/users".to_string()), "{r:?}");
        let r = readings("/v1/admin/users.").unwrap();
        assert!(r.contains(&"/v1/admin/users".to_string()), "{r:?}");
        let r = readings("/index.php/v1/admin/users").unwrap();
        assert!(r.contains(&"/v1/admin/users".to_string()), "{r:?}");
        let r = readings("/v1/query.json/").unwrap();
        assert!(r.contains(&"/v1/query/".to_string()), "{r:?}");
        let r = readings("/v1/caf%C3%A9/x").unwrap();
        assert!(r.contains(&"/v1/café/x".to_string()), "{r:?}");
        let r = readings("/v1/a;x=1/b").unwrap();
        assert!(r.contains(&"/v1/a/b".to_string()), "{r:?}");
        assert!(readings("/v1/plain/path").unwrap().is_empty());
        assert!(readings("/.well-known/x").unwrap().is_empty());
        assert!(readings("/v1/.hidden").unwrap().is_empty());
    }

    #[test]
    fn error_messages_are_clear() {
        assert_eq!(
            PathError::EncodedSlash.to_string(),
            "encoded '/' (%2F) in path"
        );
        assert_eq!(
            PathError::AboveRoot.to_string(),
            "'..' climbs above the root"
        );
        assert_eq!(
            PathError::EncodedControlCharacter(0x0A).to_string(),
            "encoded control character (%0A) in path"
        );
        assert_eq!(
            PathError::ControlCharacter(0x7F).to_string(),
            "control character 0x7F in path"
        );
        assert_eq!(PathError::Backslash.to_string(), "backslash ('\\') in path");
    }

    #[test]
    fn fast_path_is_taken_only_for_canonical_input() {
        assert!(is_already_canonical(TARGET.as_bytes()));
        assert!(is_already_canonical(b"/a/b/"));
        for p in ["/a//b", "/a/./b", "/a/.b", "/a%41", "/a b", "/é", "/a\\b"] {
            assert!(!is_already_canonical(p.as_bytes()), "input {p:?}");
        }
    }

    /// Deterministic xorshift64* generator, so the corpus is the same on every run.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn is_hex_upper(b: u8) -> bool {
        b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
    }

    fn check_invariants(input: &str, out: &str) {
        assert!(out.starts_with('/'), "{input:?} -> {out:?}");
        assert!(out.is_ascii(), "{input:?} -> {out:?}");
        for bad in ["//", "/./", "/../"] {
            assert!(!out.contains(bad), "{input:?} -> {out:?} contains {bad:?}");
        }
        assert!(!out.ends_with("/."), "{input:?} -> {out:?}");
        assert!(!out.ends_with("/.."), "{input:?} -> {out:?}");
        assert!(out != "/." && out != "/..", "{input:?} -> {out:?}");
        let bytes = out.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b != b'%' {
                continue;
            }
            let (hi, lo) = (bytes[i + 1], bytes[i + 2]);
            assert!(is_hex_upper(hi) && is_hex_upper(lo), "{input:?} -> {out:?}");
            let v = hex_value(hi).unwrap() << 4 | hex_value(lo).unwrap();
            assert!(!is_unreserved(v), "{input:?} -> {out:?} keeps %{v:02X}");
            assert!(
                !matches!(v, b'/' | b'\\' | 0x00),
                "{input:?} -> {out:?} keeps %{v:02X}"
            );
        }
        let upper = out.to_ascii_uppercase();
        for bad in ["%2F", "%5C", "%00"] {
            assert!(!upper.contains(bad), "{input:?} -> {out:?}");
        }
        let segments: Vec<&str> = out.split('/').collect();
        for (i, seg) in segments.iter().enumerate().skip(1) {
            let last = i == segments.len() - 1;
            assert!(!seg.is_empty() || last, "{input:?} -> {out:?}");
            assert!(*seg != "." && *seg != "..", "{input:?} -> {out:?}");
        }
    }

    #[test]
    fn generated_corpus_properties() {
        const ALPHABET: &[char] = &[
            'a', '/', '.', '%', '2', 'e', 'E', 'f', 'F', '5', 'c', '0', ';', '3', 'B', '4', '1',
            'é', ' ',
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0usize;
        let mut refused = 0usize;
        let mut took_fast_path = 0usize;
        for _ in 0..20_000 {
            let len = rng.below(24);
            let mut s = String::new();
            if rng.below(8) != 0 {
                s.push('/');
            }
            for _ in 0..len {
                s.push(ALPHABET[rng.below(ALPHABET.len())]);
            }
            match normalize_path(&s) {
                Ok(out) => {
                    accepted += 1;
                    check_invariants(&s, &out);
                    assert_eq!(normalize_path(&out).as_deref(), Ok(out.as_str()), "{s:?}");
                    if s.starts_with('/') {
                        if is_already_canonical(s.as_bytes()) {
                            took_fast_path += 1;
                            assert_eq!(out, s, "fast path changed {s:?}");
                        }
                        assert_eq!(normalize_slow(&s).as_deref(), Ok(out.as_str()), "{s:?}");
                    }
                }
                Err(e) => {
                    refused += 1;
                    assert!(!e.to_string().is_empty());
                    if s.starts_with('/') {
                        assert_eq!(normalize_slow(&s), Err(e), "{s:?}");
                    }
                }
            }
        }
        assert!(accepted > 2_000, "accepted only {accepted}");
        assert!(refused > 2_000, "refused only {refused}");
        assert!(took_fast_path > 100, "fast path only {took_fast_path}");
    }
}
