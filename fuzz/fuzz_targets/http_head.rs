//! The first bytes of a connection, as `http::accept` reads them to decide
//! whether walcast's SSE writer or hyper serves it. Input: arbitrary bytes.
//! Nothing may panic; a request taken for SSE names a tenant and an
//! `/v1/<tenant>/events` path; no prefix of the input is taken for SSE
//! when the whole is not, unless the whole has bytes after the head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast::http::accept::sniff;

fuzz_target!(|data: &[u8]| {
    let whole = sniff(data);
    if let Some(Some(request)) = &whole {
        assert!(!request.tenant.is_empty());
        assert_eq!(request.path, format!("/v1/{}/events", request.tenant));
        assert!(!request.tenant.contains('/'));
    }
    // Reading stops at the first decision, so a decision on a prefix must
    // not contradict what more bytes would show: a prefix is never taken
    // for SSE (the head is complete only at its end).
    for n in [1, data.len() / 2, data.len().saturating_sub(1)] {
        if n > 0 && n < data.len() {
            if let Some(Some(_)) = sniff(&data[..n]) {
                // A complete head followed by more bytes: the whole input is
                // a pipelined request, which hyper answers.
                assert!(matches!(whole, Some(None)), "prefix {n} taken for SSE, whole: {whole:?}");
            }
        }
    }
});
