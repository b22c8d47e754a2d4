//! The first bytes of a connection, as `http::accept` reads them to decide
//! whether walcast's SSE writer or hyper serves it. Input: arbitrary bytes.
//! Nothing may panic; a request taken for SSE names a tenant and an
//! `/v1/<tenant>/events` path; a strict prefix is taken for SSE only when
//! the whole input has more bytes after that head (a pipelined request),
//! and the whole is then left to hyper.
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
    // Reading stops at the first decision: a prefix taken for SSE must be a
    // complete head, so the whole input is that head plus more bytes.
    for n in [1, data.len() / 2, data.len().saturating_sub(1)] {
        if n > 0 && n < data.len() {
            if let Some(Some(_)) = sniff(&data[..n]) {
                assert!(matches!(whole, Some(None)), "prefix {n} taken for SSE, whole: {whole:?}");
            }
        }
    }
});
