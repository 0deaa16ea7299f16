//! JSON body inspection. A body is parsed into a [`Doc`] that keeps **every** member of
//! every object, duplicates included, because parsers disagree on which duplicate
//! counts (Go and `serde_json` take the last, some take the first) and case-insensitive
//! binders (Go's `encoding/json`, ASP.NET) fold `SQL`, `ſql` and `sql` to one field.
//! Strict rules see every reading; an object whose keys collide under folding makes
//! the document [`Doc::ambiguous`], which reviewers are told.
//!
//! Pointers select with `*` for every element or member; `~1` and `~0` escape `/` and
//! `~` (RFC 6901).

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::fmt;

/// A JSON value that keeps every member of an object, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum J {
    Null,
    Bool(bool),
    Num(Number),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

/// A parsed body.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub root: J,
    /// Some object holds two keys that are equal, or equal under case folding.
    pub ambiguous: bool,
}

impl<'de> Deserialize<'de> for J {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JVisitor)
    }
}

struct JVisitor;

impl<'de> Visitor<'de> for JVisitor {
    type Value = J;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<J, E> {
        Ok(J::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<J, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<J, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<J, E> {
        Ok(Number::from_f64(v).map_or(J::Null, J::Num))
    }
    fn visit_str<E>(self, v: &str) -> Result<J, E> {
        Ok(J::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<J, E> {
        Ok(J::Str(v))
    }
    fn visit_unit<E>(self) -> Result<J, E> {
        Ok(J::Null)
    }
    fn visit_none<E>(self) -> Result<J, E> {
        Ok(J::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<J, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<J>()? {
            out.push(v);
        }
        Ok(J::Arr(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<J, A::Error> {
        let mut out = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let v = map.next_value::<J>()?;
            out.push((key, v));
        }
        Ok(J::Obj(out))
    }
}

pub use crate::http::fold;

fn has_collision(v: &J) -> bool {
    match v {
        J::Arr(a) => a.iter().any(has_collision),
        J::Obj(m) => {
            let mut seen = std::collections::HashSet::new();
            m.iter().any(|(k, _)| !seen.insert(fold(k))) || m.iter().any(|(_, v)| has_collision(v))
        }
        _ => false,
    }
}

/// Parses a body as JSON, keeping every member (see the module documentation).
pub fn parse(bytes: &[u8]) -> Result<Doc, String> {
    let root: J = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let ambiguous = has_collision(&root);
    Ok(Doc { root, ambiguous })
}

/// A document built from form fields, so a `json` rule reads a form body as Rails,
/// Laravel and PHP bind it: `sql=…` is `/sql`, `spec[tier]=prod` is `/spec/tier`,
/// `ids[]=1` is `/ids/0`; `spec.tier=prod` is `/spec/tier` too, as Spring binds it.
pub fn from_fields<'a>(fields: impl Iterator<Item = (&'a str, &'a str)>) -> Doc {
    let mut root = J::Obj(Vec::new());
    for (key, value) in fields {
        let path = segments(key);
        insert(&mut root, &path, J::Str(value.to_string()));
        // Rails keeps `spec.tier` as one name where Spring nests it: both readings.
        if path.len() > 1 && key.contains('.') && !key.contains('[') {
            insert(&mut root, &[key], J::Str(value.to_string()));
        }
    }
    let ambiguous = has_collision(&root);
    Doc { root, ambiguous }
}

/// The path a parameter name binds to: `spec[tier]`, `spec['tier']`, `spec.tier` and
/// `ops[0].sql` are `spec/tier` and `ops/0/sql`; `ids[]` is an array element. A name
/// that does not parse as such is one segment.
fn segments(key: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let first_end = key.find(['[', '.']).unwrap_or(key.len());
    if first_end == 0 {
        return vec![key];
    }
    out.push(&key[..first_end]);
    let mut rest = &key[first_end..];
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let Some(close) = r.find(']') else {
                return vec![key];
            };
            let inner = &r[..close];
            let inner = inner
                .strip_prefix('\'')
                .and_then(|i| i.strip_suffix('\''))
                .or_else(|| inner.strip_prefix('"').and_then(|i| i.strip_suffix('"')))
                .unwrap_or(inner);
            out.push(inner);
            rest = &r[close + 1..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['[', '.']).unwrap_or(r.len());
            if end == 0 {
                return vec![key];
            }
            out.push(&r[..end]);
            rest = &r[end..];
        } else {
            return vec![key];
        }
    }
    out
}

fn insert(node: &mut J, path: &[&str], value: J) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if first.is_empty() || first.parse::<usize>().is_ok() {
        // `a[]` or `a[0]`: an element of an array.
        if !matches!(node, J::Arr(_)) {
            *node = J::Arr(Vec::new());
        }
        if let J::Arr(items) = node {
            if rest.is_empty() {
                items.push(value);
            } else {
                let mut child = J::Obj(Vec::new());
                insert(&mut child, rest, value);
                items.push(child);
            }
        }
        return;
    }
    if !matches!(node, J::Obj(_)) {
        *node = J::Obj(Vec::new());
    }
    if let J::Obj(members) = node {
        if rest.is_empty() {
            members.push((first.to_string(), value));
            return;
        }
        match members.iter_mut().find(|(k, _)| k == first) {
            Some((_, child)) => insert(child, rest, value),
            None => {
                let mut child = J::Obj(Vec::new());
                insert(&mut child, rest, value);
                members.push((first.to_string(), child));
            }
        }
    }
}

/// Every value a JSON pointer selects. With `fold_case`, object keys match under
/// [`fold`]; every member with a matching key is selected (duplicates included).
pub fn select<'v>(doc: &'v J, pointer: &str, fold_case: bool) -> Vec<&'v J> {
    let mut current = vec![doc];
    if pointer.is_empty() {
        return current;
    }
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        let folded = fold_case.then(|| fold(&seg));
        let mut next = Vec::new();
        for v in current {
            match v {
                J::Obj(m) if seg == "*" => next.extend(m.iter().map(|(_, v)| v)),
                J::Arr(a) if seg == "*" => next.extend(a.iter()),
                J::Obj(m) => next.extend(
                    m.iter()
                        .filter(|(k, _)| match &folded {
                            Some(f) => *k == seg || fold(k) == *f,
                            None => *k == seg,
                        })
                        .map(|(_, v)| v),
                ),
                J::Arr(a) => {
                    if let Ok(i) = seg.parse::<usize>() {
                        next.extend(a.get(i));
                    }
                }
                _ => {}
            }
        }
        current = next;
    }
    current
}

/// The top-level scalar members of an object, as form fields (Rails and Laravel merge
/// a JSON body's members into the request parameters).
pub fn top_level_fields(doc: &J) -> Vec<(&str, String)> {
    match doc {
        J::Obj(m) => m
            .iter()
            .filter(|(_, v)| !matches!(v, J::Obj(_)))
            .flat_map(|(k, v)| match v {
                J::Arr(items) => items.iter().map(|i| (k.as_str(), as_text(i))).collect(),
                other => vec![(k.as_str(), as_text(other))],
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The value as `serde_json` would hold it (the last of duplicate members wins).
pub fn to_value(v: &J) -> Value {
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Num(n) => Value::Number(n.clone()),
        J::Str(s) => Value::String(s.clone()),
        J::Arr(a) => Value::Array(a.iter().map(to_value).collect()),
        J::Obj(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                out.insert(k.clone(), to_value(v));
            }
            Value::Object(out)
        }
    }
}

/// Every text a strict rule sees for a JSON value: [`as_text`], and for a number also
/// the integer it equals (`1e2`, `100.0` and `100` are one value to Go's and
/// JavaScript's decoders: a rule written `"100"` matches all three).
pub fn as_texts(v: &J) -> Vec<String> {
    let text = as_text(v);
    match v {
        // `spec[tier][]=prod` binds `["prod"]`, which JavaScript compares equal to
        // `"prod"`: each scalar element is a reading too.
        J::Arr(items) => std::iter::once(text)
            .chain(
                items
                    .iter()
                    .filter(|i| !matches!(i, J::Arr(_) | J::Obj(_)))
                    .flat_map(as_texts),
            )
            .collect(),
        J::Num(n) => {
            let mut out = vec![text];
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < 9.0e15 {
                    let int = format!("{}", f as i64);
                    if !out.contains(&int) {
                        out.push(int);
                    }
                }
            }
            out
        }
        _ => vec![text],
    }
}

/// The text a matcher sees for a JSON value: strings as they are, everything else as
/// compact JSON (`true`, `42`, `null`, `{"a":1}`).
pub fn as_text(v: &J) -> String {
    match v {
        J::Str(s) => s.clone(),
        other => to_value(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(doc: &Doc, p: &str, fold: bool) -> Vec<String> {
        select(&doc.root, p, fold)
            .into_iter()
            .map(as_text)
            .collect()
    }

    #[test]
    fn duplicate_and_folded_keys_are_kept_and_flagged() {
        let d = parse(br#"{"sql":"select 1","sql":"drop table t"}"#).unwrap();
        assert!(d.ambiguous);
        assert_eq!(texts(&d, "/sql", true), ["select 1", "drop table t"]);
        assert_eq!(texts(&d, "/sql", false), ["select 1", "drop table t"]);
        let d = parse(br#"{"tier":"dev","TIER":"prod"}"#).unwrap();
        assert!(d.ambiguous);
        assert_eq!(texts(&d, "/tier", true), ["dev", "prod"]);
        assert_eq!(texts(&d, "/tier", false), ["dev"]);
        let d = parse(br#"{"a":{"b":1},"c":[{"b":1},{"b":2}]}"#).unwrap();
        assert!(!d.ambiguous);
        let d = parse(r#"{"Spec": {"Tier": "prod"}}"#.as_bytes()).unwrap();
        assert_eq!(texts(&d, "/spec/tier", true), ["prod"]);
        assert!(texts(&d, "/spec/tier", false).is_empty());
    }

    #[test]
    fn go_folds_long_s_and_kelvin() {
        let d = parse("{\"\u{17f}ql\":\"drop\",\"\u{212a}ey\":\"x\"}".as_bytes()).unwrap();
        assert_eq!(texts(&d, "/sql", true), ["drop"]);
        assert_eq!(texts(&d, "/key", true), ["x"]);
        assert_eq!(texts(&d, "/SQL", true), ["drop"]);
        let d = parse("{\"s\":1,\"\u{17f}\":2}".as_bytes()).unwrap();
        assert!(d.ambiguous);
    }

    #[test]
    fn numbers_are_read_as_the_integer_they_equal() {
        let d = parse(br#"{"a":1e2,"b":100.0,"c":-0.0,"d":2.5,"e":100}"#).unwrap();
        for p in ["/a", "/b", "/e"] {
            let all: Vec<String> = select(&d.root, p, true)
                .into_iter()
                .flat_map(as_texts)
                .collect();
            assert!(all.contains(&"100".to_string()), "{p}: {all:?}");
        }
        let c: Vec<String> = select(&d.root, "/c", true)
            .into_iter()
            .flat_map(as_texts)
            .collect();
        assert!(c.contains(&"0".to_string()), "{c:?}");
        assert_eq!(as_texts(select(&d.root, "/d", true)[0]), ["2.5"]);
    }

    #[test]
    fn pointer_with_wildcards() {
        let d = parse(br#"{"items":[{"sql":"a"},{"sql":"b"}],"a/b":{"~":1}}"#).unwrap();
        assert_eq!(texts(&d, "/items/*/sql", false), ["a", "b"]);
        assert_eq!(texts(&d, "/items/1/sql", false), ["b"]);
        assert_eq!(texts(&d, "/a~1b/~0", false), ["1"]);
        assert!(texts(&d, "/missing", false).is_empty());
    }

    #[test]
    fn form_fields_read_as_rails_binds_them() {
        let d = from_fields(
            [
                ("sql", "drop"),
                ("spec[tier]", "prod"),
                ("ids[]", "1"),
                ("ids[]", "2"),
            ]
            .into_iter(),
        );
        assert_eq!(texts(&d, "/sql", true), ["drop"]);
        assert_eq!(texts(&d, "/spec/tier", true), ["prod"]);
        assert_eq!(texts(&d, "/ids/*", true), ["1", "2"]);
        assert_eq!(texts(&d, "/ids/1", true), ["2"]);
        let d = from_fields([("spec.tier", "prod")].into_iter());
        assert_eq!(texts(&d, "/spec/tier", true), ["prod"]);
        assert!(!d.ambiguous);
        let d = from_fields([("spec['tier']", "prod"), ("ops[0].sql", "drop")].into_iter());
        assert_eq!(texts(&d, "/spec/tier", true), ["prod"]);
        assert_eq!(texts(&d, "/ops/0/sql", true), ["drop"]);
        let d = from_fields([("spec[tier][]", "prod")].into_iter());
        let all: Vec<String> = select(&d.root, "/spec/tier", true)
            .into_iter()
            .flat_map(as_texts)
            .collect();
        assert!(all.contains(&"prod".to_string()), "{all:?}");
    }
}
