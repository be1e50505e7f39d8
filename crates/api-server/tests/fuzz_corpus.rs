//! The `config` fuzz target's corpus as api-server config files, replayed on stable with the
//! same invariants (the `chunked` corpus is replayed in `crates/proxy/tests/fuzz_corpus.rs`).

#[path = "../../../fuzz/checks/config.rs"]
mod config;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;

#[test]
fn config_corpus_holds_the_invariants() {
    corpus::each_input("config", config::check::<api_server::Config>);
}
