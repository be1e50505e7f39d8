//! The `chunked` fuzz target's corpus, replayed on stable with the same invariants.

#[path = "../../../fuzz/checks/chunked.rs"]
mod chunked;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;

#[test]
fn chunked_corpus_holds_the_invariants() {
    corpus::each_input("chunked", chunked::check);
}
