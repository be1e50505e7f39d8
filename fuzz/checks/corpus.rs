//! Replays a fuzz target's corpus on stable, for the `tests/fuzz_corpus.rs` of the crates under
//! `crates/` (included there by `#[path]`).

use std::path::Path;

/// Runs `check` on every file of `fuzz/corpus/<target>/`; the failing file's path is printed
/// before the panic.
pub fn each_input(target: &str, check: impl Fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "expected inputs in {}, found none",
        dir.display()
    );
    for file in files {
        let data = std::fs::read(&file).expect("a readable corpus file");
        eprintln!("checking {}", file.display());
        check(&data);
    }
}
