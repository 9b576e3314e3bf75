//! Reading the JSON configuration files users share with DL Streamer Pipeline Server.

use std::path::Path;

use serde_json::Value;

/// Reads and parses a JSON file. Errors name the file, and the line and column for bad JSON.
pub fn read_json_file(path: &Path) -> Result<Value, String> {
    if path.is_dir() {
        return Err(format!(
            "{}: is a directory, not a JSON file",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))
}
