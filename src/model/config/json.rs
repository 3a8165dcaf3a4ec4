//! Typed reads of JSON config keys: absent or `null` gives the default, anything malformed gives an
//! [`Error::Config`] naming the key (with its path, e.g. `text_config.hidden_size`) and the value.
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// One JSON object with the dotted path it sits at, for error messages.
#[derive(Clone, Copy)]
pub(crate) struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    pub path: &'a str,
}

impl<'a> Obj<'a> {
    /// The full name of `key` for messages.
    pub fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A non-negative integer (a float with no fraction, as Python writes `8192.0`, is taken too).
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => as_usize(v)
                .ok_or_else(|| Error::config(self.name(key), v, "expected a non-negative integer")),
        }
    }

    /// A finite number.
    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => self.f32_value(key, v),
        }
    }

    /// A required finite number.
    pub fn f32_req(&self, key: &str) -> Result<f32> {
        match self.get(key) {
            None => Err(Error::config(self.name(key), "missing", "required here")),
            Some(v) => self.f32_value(key, v),
        }
    }

    fn f32_value(&self, key: &str, v: &Value) -> Result<f32> {
        match v.as_f64() {
            Some(x) if x.is_finite() && (x as f32).is_finite() => Ok(x as f32),
            _ => Err(Error::config(self.name(key), v, "expected a finite number")),
        }
    }

    /// A boolean; numbers count as Python truthiness (released configs write
    /// `"attn_temperature_tuning": 4`).
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => match v.as_f64() {
                Some(x) => Ok(x != 0.0),
                None => Err(Error::config(self.name(key), v, "expected a boolean")),
            },
        }
    }

    /// A string.
    pub fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Error::config(self.name(key), v, "expected a string")),
        }
    }

    /// A nested object.
    pub fn obj_opt(&self, key: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(Error::config(self.name(key), v, "expected an object")),
        }
    }

    /// A list (absent or null: `None`).
    pub fn list_opt(&self, key: &str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(Error::config(self.name(key), v, "expected a list")),
        }
    }

    /// A token id given as an integer or a list of integers (`eos_token_id`); absent: `None`.
    pub fn token_ids_opt(&self, key: &str) -> Result<Option<Vec<u32>>> {
        let bad = |v: &Value| {
            Error::config(
                self.name(key),
                v,
                "expected a token id or a list of token ids",
            )
        };
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| as_u32(x).ok_or_else(|| bad(x)))
                .collect::<Result<_>>()
                .map(Some),
            Some(v) => as_u32(v).map(|id| Some(vec![id])).ok_or_else(|| bad(v)),
        }
    }
}

/// A JSON number that is a non-negative integer.
pub(crate) fn as_usize(v: &Value) -> Option<usize> {
    if let Some(u) = v.as_u64() {
        return usize::try_from(u).ok();
    }
    let f = v.as_f64()?;
    (f >= 0.0 && f.fract() == 0.0 && f < 2f64.powi(53)).then_some(f as usize)
}

fn as_u32(v: &Value) -> Option<u32> {
    as_usize(v).and_then(|u| u32::try_from(u).ok())
}

/// An f32 as JSON with its shortest decimal spelling (0.1, not 0.10000000149011612); reads back exactly.
pub(crate) fn f32_value(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .map(Value::from)
        .unwrap_or(Value::Null)
}
