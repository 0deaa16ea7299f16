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
    // Enum names: System.Text.Json and ASP.NET's model binder parse them without
    // regard to case (`PROD` is `prod`).
    let t = v.trim();
    let same_name = if rule.is_ascii() && t.is_ascii() {
        rule.eq_ignore_ascii_case(t)
    } else {
        crate::http::fold(rule) == crate::http::fold(t)
    };
    if same_name {
        return true;
    }
    let Some(want) = number(rule) else {
        return false;
    };
    // Jackson (Spring's default) turns `null` and `""` into 0 for an `int`.
    if want == 0.0 && matches!(v.trim(), "" | "null") {
        return true;
    }
    match number(v) {
        Some(got) if got == want => true,
        // Jackson truncates a decimal into an `int` field: 0.5 is 0, 3.9 is 3.
        Some(got) => want.fract() == 0.0 && got.is_finite() && got.trunc() == want,
        None => false,
    }
}

/// A number as lax parsers read one: decimal with exponent, or an integer in hex,
/// binary or octal (`0x0`: JavaScript's `Number()`), with `_` separators (Python's
/// `int()`).
fn number(s: &str) -> Option<f64> {
    let s = s.trim();
    if !s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b"+-.".contains(&b))
    {
        return None;
    }
    if s.bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
    {
        return s.parse::<f64>().ok();
    }
    let t = s.replace('_', "");
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.to_string()),
        None => (false, t.trim_start_matches('+').to_string()),
    };
    let lower = t.to_ascii_lowercase();
    let parsed = if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(b) = lower.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()
    } else if let Some(o) = lower.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if lower.bytes().all(|b| b.is_ascii_digit()) {
        lower.parse::<i64>().ok()
    } else {
        None
    }?;
    #[allow(clippy::cast_precision_loss)]
    let f = parsed as f64;
    Some(if neg { -f } else { f })
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
        assert!(!zero.is_match_values(true, ["1.5", "false", "x0", "-1"].into_iter()));
        // Jackson truncates decimals and reads null and "" as 0; JavaScript reads hex.
        for v in ["0.5", "-0.5", "null", "", "0x0", "0b0", "0_0"] {
            assert!(zero.is_match_values(true, [v].into_iter()), "{v}");
        }
        // Enum names, any case.
        assert!(exact("prod").is_match_values(true, ["PROD"].into_iter()));
        assert!(!exact("prod").is_match_values(false, ["PROD"].into_iter()));
        // No value never matches.
        assert!(!m.is_match_values(true, std::iter::empty::<&str>()));
        assert!(!m.is_match_values(false, std::iter::empty::<&str>()));
    }
}
