//! The rule language: loading `rules/*.yaml`, compiling it once, and deciding requests.
//!
//! Layout, in the order rules live:
//! - [`raw`]: the YAML shapes as written (unknown keys rejected).
//! - [`load`](mod@load): reads the files a config names, fingerprints them
//!   ([`RuleSet::version`]) and collects errors and warnings, each `file:line:col`.
//! - [`compile`]: raw rules into [`Rule`]s (globs to regexes, `re:` compiled once).
//! - [`check`]: lint warnings for `airlock rules check` (shadowed rules, rules that
//!   deny everything, unknown methods, duplicate upstream routes, owner/reviewer ids
//!   that differ only in case).
//! - [`rule`] and [`matcher`]: the compiled data ([`Verdict`], [`ApprovalPolicy`],
//!   [`StrMatcher`]).
//! - [`decide`], [`params`], [`body`] and [`json`]: the pure decision,
//!   [`RuleSet::head`] then [`RuleSet::finish`], reading every field, header, method
//!   and body the way the laxest upstream could (a deny or approve rule matches any
//!   reading, an allow rule must match all). No I/O, no clock, no globals; nothing
//!   here runs at request time except these four.
//! - [`testing`]: runs the `tests:` blocks.

pub mod body;
pub mod check;
pub mod compile;
pub mod decide;
pub mod json;
pub mod load;
pub mod matcher;
pub mod params;
pub mod raw;
pub mod rule;
pub mod testing;

pub use body::Body;
pub use compile::glob_to_regex;
pub use decide::{Check, Decision, Head, RequestView, RuleSet, ANY_METHOD};
pub use load::{load, load_files, rule_files, rules_version, LoadedRules};
pub use matcher::{Alt, StrMatcher};
pub use rule::{ApprovalPolicy, Requirement, Rule, Verdict};
