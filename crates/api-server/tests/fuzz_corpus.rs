//! The `config` fuzz target's corpus as api-server config files, replayed on stable with the
//! same invariants.

#[path = "../../../fuzz/checks/chunked.rs"]
mod chunked;
#[path = "../../../fuzz/checks/config.rs"]
mod config;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;

#[test]
fn config_corpus_holds_the_invariants() {
    corpus::each_input("config", config::check::<api_server::Config>);
}

#[test]
fn chunked_corpus_holds_the_invariants() {
    corpus::each_input("chunked", chunked::check);
}
