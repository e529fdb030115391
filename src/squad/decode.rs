//! Reading and writing `predictions.json`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;

use crate::error::input;

/// Read a `predictions.json`: a JSON object mapping question ids to answer strings (what the
/// official script reads). Anything else is an input error naming the file and the id.
pub fn read_predictions(path: &Path) -> Result<HashMap<String, String>> {
    let name = path.display();
    let text = std::fs::read(path).map_err(|e| input(format!("{name}: cannot read: {e}")))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| input(format!("{name}: not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else {
        return Err(input(format!(
            "{name}: expected a JSON object mapping question ids to answer strings"
        )));
    };
    map.into_iter()
        .map(|(id, v)| match v {
            serde_json::Value::String(s) => Ok((id, s)),
            other => Err(input(format!(
                "{name}: the prediction for id {id:?} must be a string, found {}",
                match other {
                    serde_json::Value::Null => "null",
                    serde_json::Value::Bool(_) => "a boolean",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::Array(_) => "a list",
                    _ => "an object",
                }
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_prediction_files_are_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        for (content, expect) in [
            ("{\"a\": 1}", "id \"a\" must be a string, found a number"),
            ("[\"a\"]", "expected a JSON object"),
            ("{\"a\": ", "not valid JSON"),
        ] {
            std::fs::write(&path, content).unwrap();
            let e = read_predictions(&path).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), crate::error::EXIT_BAD_INPUT);
            let m = format!("{e}");
            assert!(m.starts_with(&path.display().to_string()), "{m}");
            assert!(m.contains(expect), "{m}");
        }
    }
}
