//! String matchers: the values a rule compares request parts against.
//!
//! A matcher is an exact value, a `re:` regex, or a list of them (any-of). This module
//! owns the multi-value semantics (a header or parameter that appears several times);
//! it never allocates while matching.

use regex::Regex;

/// One alternative of a string matcher.
#[derive(Debug, Clone)]
pub enum Alt {
    /// The value must be exactly this.
    Exact(String),
    /// The value must match this regex (anchored as written).
    Re(Regex),
}

/// A value matcher: exact string, `re:` regex, or a list of them (any-of).
#[derive(Debug, Clone)]
pub struct StrMatcher {
    /// The alternatives; one matching is enough.
    pub alts: Vec<Alt>,
}

impl StrMatcher {
    /// Whether one value matches any alternative.
    pub fn is_match(&self, v: &str) -> bool {
        self.alts.iter().any(|a| match a {
            Alt::Exact(e) => e == v,
            Alt::Re(r) => r.is_match(v),
        })
    }

    /// Whether one value matches any alternative as a lax upstream reads values: an
    /// exact value also matches the value trimmed; an exact `true`/`false` also
    /// matches every spelling of that boolean (`TRUE`, `1`,
    /// `t`, `on`, `yes`: Go's `ParseBool`, Spring, PHP's `FILTER_VALIDATE_BOOLEAN`),
    /// and an exact number every spelling of that number (`0.0`, `-0`, `0e5`).
    pub fn is_match_lax(&self, v: &str) -> bool {
        self.alts.iter().any(|a| match a {
            // Laravel's TrimStrings middleware trims every value.
            Alt::Exact(e) => e == v || e == v.trim() || same_value(e, v),
            Alt::Re(r) => r.is_match(v) || r.is_match(v.trim()),
        })
    }

    /// Matches a multi-valued input. A strict rule (deny, approve) matches when any
    /// value matches (read laxly, [`StrMatcher::is_match_lax`]); an allow rule only
    /// when every value matches exactly, so a repeated parameter can never smuggle a
    /// request past a stricter reading. No value at all never matches.
    pub fn is_match_values<S: AsRef<str>>(
        &self,
        strict: bool,
        values: impl Iterator<Item = S>,
    ) -> bool {
        let mut seen = false;
        for v in values {
            seen = true;
            let m = if strict {
                self.is_match_lax(v.as_ref())
            } else {
                self.is_match(v.as_ref())
            };
            if strict && m {
                return true;
            }
            if !strict && !m {
                return false;
            }
        }
        seen && !strict
    }
}

/// Whether a rule's exact value and a request's value are the same boolean or the same
/// number to a lax upstream.
fn same_value(rule: &str, v: &str) -> bool {
    let boolean = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "t" | "on" | "yes" | "y" => Some(true),
        "false" | "0" | "f" | "off" | "no" | "n" | "" => Some(false),
        _ => None,
    };
    if rule.eq_ignore_ascii_case("true") || rule.eq_ignore_ascii_case("false") {
        return boolean(v).is_some_and(|b| Some(b) == boolean(rule));
    }
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)))
        .then(|| s.parse::<f64>().ok())
        .flatten()
    };
    matches!((number(rule), number(v)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(v: &str) -> StrMatcher {
        StrMatcher {
            alts: vec![Alt::Exact(v.into())],
        }
    }

    #[test]
    fn repeated_values_take_the_stricter_reading() {
        let m = exact("prod");
        // A deny/approve rule sees any matching value.
        assert!(m.is_match_values(true, ["dev", "prod"].into_iter()));
        // An allow rule needs every value to match.
        assert!(!m.is_match_values(false, ["prod", "dev"].into_iter()));
        assert!(m.is_match_values(false, ["prod", "prod"].into_iter()));
        // Strict rules read booleans and numbers as lax upstreams do.
        let t = exact("true");
        for v in ["TRUE", "True", "1", "t", "on", "yes"] {
            assert!(t.is_match_values(true, [v].into_iter()), "{v}");
            assert!(!t.is_match_values(false, [v].into_iter()), "{v}");
        }
        assert!(!t.is_match_values(true, ["false", "0", "off", "maybe"].into_iter()));
        let zero = exact("0");
        for v in ["0.0", "-0", "0e5", "0E-3", "00"] {
            assert!(zero.is_match_values(true, [v].into_iter()), "{v}");
        }
        assert!(!zero.is_match_values(true, ["0.5", "false", "x0"].into_iter()));
        // No value never matches.
        assert!(!m.is_match_values(true, std::iter::empty::<&str>()));
        assert!(!m.is_match_values(false, std::iter::empty::<&str>()));
    }
}
