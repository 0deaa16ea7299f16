//! JSON body inspection: strict parsing (duplicate keys are an error, because two
//! parsers may disagree on which one counts) and JSON-pointer selection with `*`.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// A JSON document parsed without tolerating duplicate object keys.
#[derive(Debug, Clone, PartialEq)]
pub struct StrictJson(pub Value);

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictJson(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        // Keys equal but for case are duplicates too: case-insensitive binders
        // (Go, ASP.NET) would pick one of them.
        let mut folded = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictJson(v) = map.next_value()?;
            if !folded.insert(key.to_lowercase()) || out.insert(key.clone(), v).is_some() {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(Value::Object(out))
    }
}

/// Parses a body as JSON, refusing duplicate keys.
pub fn parse_strict(bytes: &[u8]) -> Result<StrictJson, String> {
    serde_json::from_slice::<StrictJson>(bytes).map_err(|e| e.to_string())
}

/// Every value a JSON pointer selects. A `*` segment stands for every element of an
/// array or every member of an object; `~1` and `~0` escape `/` and `~` (RFC 6901).
/// With `fold_case`, object keys match regardless of case.
pub fn select<'v>(doc: &'v Value, pointer: &str, fold_case: bool) -> Vec<&'v Value> {
    let mut current = vec![doc];
    if pointer.is_empty() {
        return current;
    }
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        let mut next = Vec::new();
        for v in current {
            match v {
                Value::Object(m) if seg == "*" => next.extend(m.values()),
                Value::Array(a) if seg == "*" => next.extend(a.iter()),
                Value::Object(m) if fold_case => {
                    let want = seg.to_lowercase();
                    next.extend(
                        m.iter()
                            .filter(|(k, _)| k.to_lowercase() == want)
                            .map(|(_, v)| v),
                    );
                }
                Value::Object(m) => next.extend(m.get(&seg)),
                Value::Array(a) => {
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

/// The text a matcher sees for a JSON value: strings as they are, everything else as
/// compact JSON (`true`, `42`, `null`, `{"a":1}`).
pub fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused() {
        assert!(parse_strict(br#"{"sql":"select 1","sql":"drop table t"}"#).is_err());
        assert!(parse_strict(br#"{"a":{"b":1,"b":2}}"#).is_err());
        assert!(parse_strict(br#"{"a":{"b":1},"c":[{"b":1},{"b":2}]}"#).is_ok());
        assert!(parse_strict(br#"{"tier":"dev","TIER":"prod"}"#).is_err());
        let doc = serde_json::json!({"Spec": {"Tier": "prod"}});
        assert_eq!(select(&doc, "/spec/tier", true)[0], "prod");
        assert!(select(&doc, "/spec/tier", false).is_empty());
    }

    #[test]
    fn pointer_with_wildcards() {
        let doc = serde_json::json!({"items":[{"sql":"a"},{"sql":"b"}],"a/b":{"~":1}});
        let got: Vec<String> = select(&doc, "/items/*/sql", false)
            .into_iter()
            .map(as_text)
            .collect();
        assert_eq!(got, vec!["a", "b"]);
        assert_eq!(select(&doc, "/items/1/sql", false)[0], "b");
        assert_eq!(as_text(select(&doc, "/a~1b/~0", false)[0]), "1");
        assert!(select(&doc, "/missing", false).is_empty());
    }
}
