//! The `config` fuzz target's corpus as archiver config files, replayed on stable with the same
//! invariants.

// The config lives in the binary, not the library: compile the same file here (its unit tests
// come along and run here too).
#[allow(dead_code)]
#[path = "../src/cli/config.rs"]
mod archiver_config;
#[path = "../../../fuzz/checks/config.rs"]
mod config;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;

#[test]
fn config_corpus_holds_the_invariants() {
    corpus::each_input("config", config::check::<archiver_config::Config>);
}
