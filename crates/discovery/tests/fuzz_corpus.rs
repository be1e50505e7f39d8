//! The `heartbeat` fuzz target's corpus, replayed on stable with the same invariants.

#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;
#[path = "../../../fuzz/checks/heartbeat.rs"]
mod heartbeat;

#[test]
fn heartbeat_corpus_holds_the_invariants() {
    corpus::each_input("heartbeat", heartbeat::check);
}
