//! Invariants of config loading on arbitrary TOML text, shared by the `config` fuzz target and
//! the stable corpus tests of the api-server, data-server and archiver crates.
//!
//! Never panics; an error is one line that names the text as its origin (as ARCHITECTURE.md §4.7
//! promises for `svc::ConfigError`); loading is deterministic.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use svc::{ConfigLoader, Origin, Validate};

/// Loads `data` (when UTF-8) as the TOML file of a `T` and checks every invariant; panics on a
/// violation.
pub fn check<T: DeserializeOwned + Validate + Debug>(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No prefix and no variables: only the text counts.
    let loader = ConfigLoader::new("").with_env(Vec::<(String, String)>::new());
    let first = loader.load_str::<T>(text).map_err(|e| e.to_string());
    if let Err(err) = loader.load_str::<T>(text) {
        assert_eq!(err.origin(), &Origin::Text);
        let line = err.to_string();
        assert!(!line.contains('\n'), "a multi-line error: {line:?}");
        assert!(line.starts_with("config text: "), "{line}");
        assert_eq!(first.as_ref().err(), Some(&line), "not deterministic");
    } else {
        assert!(first.is_ok(), "not deterministic");
    }
}
