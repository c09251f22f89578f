//! Finding the `trestle` binary to test.

use std::path::{Path, PathBuf};

use crate::error::HarnessError;

/// The `trestle` binary: `explicit` (`--trestle-bin`), else `$TRESTLE_BIN`, else a `trestle` next to the current
/// executable or in its parent directory (a test binary lives in `target/debug/deps`, the node binary in
/// `target/debug`). The error lists where it looked.
pub fn find_trestle(explicit: Option<&Path>) -> Result<PathBuf, HarnessError> {
    let mut looked = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_owned());
    } else {
        if let Some(p) = std::env::var_os("TRESTLE_BIN").filter(|p| !p.is_empty()) {
            candidates.push(PathBuf::from(p));
        }
        if let Ok(exe) = std::env::current_exe()
            && let Some(dir) = exe.parent()
        {
            candidates.push(dir.join("trestle"));
            if let Some(parent) = dir.parent() {
                candidates.push(parent.join("trestle"));
            }
        }
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        looked.push(c.display().to_string());
    }
    Err(HarnessError::NoBinary {
        looked: if looked.is_empty() {
            "nowhere".into()
        } else {
            looked.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_path_must_exist_and_the_error_says_where_it_looked() {
        let e = find_trestle(Some(Path::new("/nonexistent/trestle")));
        let text = e
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| e.to_string());
        assert!(text.contains("/nonexistent/trestle"), "{text}");
        assert!(text.contains("--trestle-bin"), "{text}");
    }
}
