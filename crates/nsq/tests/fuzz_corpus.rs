//! The `frame` fuzz target's corpus, replayed on stable with the same invariants.

#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;
#[path = "../../../fuzz/checks/frame.rs"]
mod frame;

#[test]
fn frame_corpus_holds_the_invariants() {
    corpus::each_input("frame", frame::check);
}
