//! The one failure policy: for every error that ends a tenant's session, what
//! follows. Retry soon (a passing fault: the network, a restarting server,
//! Redis away, bad bytes, a panic), park (retry only slowly: somebody must
//! change the configuration, a grant or the server), or stop the tenant (its
//! output is gone). Nothing here stops another tenant.

use super::PipelineError;
use crate::sink::SinkError;

/// What follows an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// Try again with growing back-off.
    Retry,
    /// Needs a human: `run` retries at the longest back-off (so that a fix
    /// takes effect without a restart); `tail` exits with the error.
    Park,
    /// The output is gone (`walcast tail | head`): stop this tenant.
    Stop,
}

/// The directive for an error that ended a session.
pub fn directive(err: &PipelineError) -> Directive {
    match err {
        PipelineError::Source(source) if source.is_transient() => Directive::Retry,
        PipelineError::Source(_) => Directive::Park,
        PipelineError::Decode { .. }
        | PipelineError::Apply { .. }
        | PipelineError::StreamEnded { .. }
        | PipelineError::Snapshot { .. }
        | PipelineError::Panicked { .. } => Directive::Retry,
        PipelineError::Sink { source, .. } => match source {
            SinkError::Closed | SinkError::Output(_) => Directive::Stop,
            SinkError::WriterFailed(_)
            | SinkError::Redis(_)
            | SinkError::Connect(_)
            | SinkError::Lost
            | SinkError::Abandoned => Directive::Retry,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SourceError;

    fn sink(source: SinkError) -> PipelineError {
        PipelineError::Sink {
            tenant: "acme".into(),
            source,
        }
    }

    #[test]
    fn each_error_has_one_directive() {
        assert_eq!(directive(&sink(SinkError::Closed)), Directive::Stop);
        assert_eq!(
            directive(&sink(SinkError::Output(std::io::Error::other("disk full")))),
            Directive::Stop
        );
        // A panicked Redis writer is a fault of this tenant's session only.
        assert_eq!(
            directive(&sink(SinkError::WriterFailed("panicked".into()))),
            Directive::Retry
        );
        assert_eq!(directive(&sink(SinkError::Lost)), Directive::Retry);
        let panicked = PipelineError::Panicked {
            tenant: "acme".into(),
            message: "index out of bounds".into(),
        };
        assert_eq!(directive(&panicked), Directive::Retry);
        let setup = PipelineError::Source(SourceError::Setup {
            tenant: crate::config::TenantId::for_tests("acme"),
            problem: "wal_level is replica".into(),
            fix: "set wal_level = logical".into(),
        });
        assert_eq!(directive(&setup), Directive::Park);
    }
}
