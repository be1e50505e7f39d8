//! The `chunked` and `host` fuzz targets' corpora, replayed on stable with the same invariants.

#[path = "../../../fuzz/checks/chunked.rs"]
mod chunked;
#[path = "../../../fuzz/checks/corpus.rs"]
mod corpus;
#[path = "../../../fuzz/checks/host.rs"]
mod host;

#[test]
fn chunked_corpus_holds_the_invariants() {
    corpus::each_input("chunked", chunked::check);
}

#[test]
fn host_corpus_holds_the_invariants() {
    corpus::each_input("host", host::check);
}
