//! The `config` fuzz target's corpus as data-server config files, replayed on stable with the
//! same invariants.

#[path = "../../../fuzz/checks/config.rs"]
mod config;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;

#[test]
fn config_corpus_holds_the_invariants() {
    corpus::each_input("config", config::check::<data_server::Config>);
}
