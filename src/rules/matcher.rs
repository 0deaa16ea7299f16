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

    /// Matches a multi-valued input. A strict rule (deny, approve) matches when any
    /// value matches; an allow rule only when every value matches, so a repeated
    /// parameter can never smuggle a request past a stricter reading. No value at all
    /// never matches.
    pub fn is_match_values<S: AsRef<str>>(
        &self,
        strict: bool,
        values: impl Iterator<Item = S>,
    ) -> bool {
        let mut seen = false;
        for v in values {
            seen = true;
            let m = self.is_match(v.as_ref());
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
        // No value never matches.
        assert!(!m.is_match_values(true, std::iter::empty::<&str>()));
        assert!(!m.is_match_values(false, std::iter::empty::<&str>()));
    }
}
