//! Reading the plugin configuration out of a `serde_json::Value`, strictly and with the path of
//! every field in its errors.
//!
//! Hand-written instead of `#[derive(Deserialize)]`: each derived struct adds its own copy of
//! serde's visitor code to the .wasm, and the filter ships inside a ConfigMap.

use serde_json::{Map, Value};

use crate::config::{problem, ConfigError};

/// The fields of one JSON object, at `path` in the configuration.
pub struct Fields<'a> {
    path: String,
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Fields<'a> {
    /// `value` must be an object with no fields but `known` (or absent: `None` reads as empty).
    pub fn of(
        path: &str,
        value: Option<&'a Value>,
        known: &[&str],
    ) -> Result<Fields<'a>, ConfigError> {
        let map = match value {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(map),
            Some(_) => return Err(problem(path, "must be an object")),
        };
        if let Some(unknown) = map.and_then(|m| m.keys().find(|k| !known.contains(&k.as_str()))) {
            let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            return Err(problem(
                path,
                format!(
                    "unknown field `{unknown}`, expected one of {}",
                    expected.join(", ")
                ),
            ));
        }
        Ok(Fields {
            path: path.to_owned(),
            map,
        })
    }

    pub fn path_of(&self, key: &str) -> String {
        if self.path == "configuration" {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    pub fn object(&self, key: &str, known: &[&str]) -> Result<Fields<'a>, ConfigError> {
        Fields::of(&self.path_of(key), self.get(key), known)
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(problem(self.path_of(key), "must be a string")),
        }
    }

    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(problem(self.path_of(key), "must be true or false")),
        }
    }

    pub fn number(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .map(Some)
                .ok_or_else(|| problem(self.path_of(key), "must be a whole number, 0 or more")),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let not_strings = || problem(self.path_of(key), "must be a list of strings");
        let items = value.as_array().ok_or_else(not_strings)?;
        items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(not_strings))
            .collect::<Result<_, _>>()
            .map(Some)
    }
}
