//! The values that appear in histories: what a JSON line or an EDN map can hold.

use std::fmt;

/// A value from a history: an operation's argument or result, or a key.
///
/// Both history formats read into this one type. JSON strings become [`Value::Str`]; EDN keywords and symbols keep
/// their own variants, so `:a` and `"a"` are different values (as they are in Clojure). Numbers that do not fit an
/// `i64` (floats, big integers, ratios) are kept as written in [`Value::Number`], which compares them textually:
/// the checkers only ever compare values for equality, and histories write a given value the same way every time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum Value {
    /// JSON `null`, EDN `nil`.
    #[default]
    Nil,
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits an `i64`.
    Int(i64),
    /// Any other number, as written (`1.5`, `12N`, `1/3`, `##Inf`).
    Number(String),
    /// A string (EDN characters such as `\a` read as one-character strings).
    Str(String),
    /// An EDN keyword, without its leading colon.
    Keyword(String),
    /// An EDN symbol.
    Symbol(String),
    /// A JSON array, an EDN vector or list.
    List(Vec<Value>),
    /// An EDN set, sorted and without duplicates.
    Set(Vec<Value>),
    /// A JSON object or an EDN map, sorted by key.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// Whether this is [`Value::Nil`].
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// The integer, if this is a [`Value::Int`].
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements, if this is a list (vector) or a set.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) | Value::Set(items) => Some(items),
            _ => None,
        }
    }

    /// The name carried by a keyword, symbol or string (`:read`, `read` and `"read"` all give `read`).
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Value::Keyword(s) | Value::Symbol(s) | Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Looks up a keyword key (`:type`) or a string key (`"type"`) in a map.
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        let Value::Map(entries) = self else { return None };
        entries.iter().find_map(|(k, v)| match k {
            Value::Keyword(s) | Value::Str(s) if s == name => Some(v),
            _ => None,
        })
    }

    /// Builds a set: sorts and removes duplicates.
    pub(crate) fn set(mut items: Vec<Value>) -> Value {
        items.sort();
        items.dedup();
        Value::Set(items)
    }

    /// Builds a map: sorts by key. Later duplicates of a key win, as in a JSON object.
    pub(crate) fn map(mut entries: Vec<(Value, Value)>) -> Value {
        // A stable sort keeps file order among equal keys; keep the last of each run.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Value, Value)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        Value::Map(out)
    }

    /// Converts a JSON value.
    pub(crate) fn from_json(json: &serde_json::Value) -> Value {
        match json {
            serde_json::Value::Null => Value::Nil,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Number(n.to_string()),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(items) => Value::List(items.iter().map(Value::from_json).collect()),
            serde_json::Value::Object(map) => Value::map(
                map.iter()
                    .map(|(k, v)| (Value::Str(k.clone()), Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Converts to JSON: keywords and symbols become strings, sets become arrays, maps with non-string keys
    /// become arrays of `[key, value]` pairs.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Nil => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Number(s) => match s.parse::<f64>() {
                Ok(f) if f.is_finite() => serde_json::Value::from(f),
                _ => serde_json::Value::String(s.clone()),
            },
            Value::Str(s) | Value::Keyword(s) | Value::Symbol(s) => serde_json::Value::String(s.clone()),
            Value::List(items) | Value::Set(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json).collect())
            }
            Value::Map(entries) => {
                if entries.iter().all(|(k, _)| k.as_name().is_some()) {
                    let mut obj = serde_json::Map::new();
                    for (k, v) in entries {
                        if let Some(name) = k.as_name() {
                            obj.insert(name.to_owned(), v.to_json());
                        }
                    }
                    serde_json::Value::Object(obj)
                } else {
                    serde_json::Value::Array(
                        entries
                            .iter()
                            .map(|(k, v)| serde_json::Value::Array(vec![k.to_json(), v.to_json()]))
                            .collect(),
                    )
                }
            }
        }
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Self {
        Value::List(items)
    }
}

/// Writes the value in EDN notation (`nil`, `3`, `"s"`, `:kw`, `[1 2]`, `#{1}`, `{:a 1}`).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn seq(f: &mut fmt::Formatter<'_>, open: &str, items: &[Value], close: &str) -> fmt::Result {
            f.write_str(open)?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(" ")?;
                }
                write!(f, "{item}")?;
            }
            f.write_str(close)
        }
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Number(s) | Value::Symbol(s) => f.write_str(s),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Keyword(s) => write!(f, ":{s}"),
            Value::List(items) => seq(f, "[", items, "]"),
            Value::Set(items) => seq(f, "#{", items, "}"),
            Value::Map(entries) => {
                f.write_str("{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k} {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_edn() {
        let v = Value::List(vec![
            Value::Nil,
            Value::Int(3),
            Value::Keyword("ok".into()),
            Value::from("s"),
        ]);
        assert_eq!(v.to_string(), r#"[nil 3 :ok "s"]"#);
        assert_eq!(
            Value::set(vec![Value::Int(2), Value::Int(1), Value::Int(2)]).to_string(),
            "#{1 2}"
        );
    }

    #[test]
    fn json_round_trip_keeps_plain_values() {
        let json: serde_json::Value = serde_json::json!({"a": [1, null, "x", true], "b": 1.5});
        let v = Value::from_json(&json);
        assert_eq!(v.to_json(), json);
        assert_eq!(v.get("a").and_then(Value::as_seq).map(<[Value]>::len), Some(4));
    }

    #[test]
    fn map_keeps_the_last_duplicate() {
        let m = Value::map(vec![
            (Value::from("k"), Value::Int(1)),
            (Value::from("k"), Value::Int(2)),
        ]);
        assert_eq!(m.get("k"), Some(&Value::Int(2)));
    }
}
