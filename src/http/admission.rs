//! Admission control: how many client connections may be open, in all and
//! per client address, and how many event streams per tenant. A connection
//! holds a `Ticket` for as long as it is open (a WebSocket's ticket moves
//! into its session); dropping it gives the place back.
//!
//! The connection cap is kept below the process's open-file limit with room
//! for the Postgres and Redis sockets, so that no number of clients can make
//! a tenant's replication reconnect fail with "Too many open files".

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// File descriptors kept free of client connections: Postgres (a
/// replication and a regular connection per tenant, more while a snapshot
/// runs), Redis (a shared connection and a writer per tenant), the
/// listeners, config and /proc reads, and the refusals in flight.
const RESERVED_FDS: usize = 128;
/// Further descriptors kept free per tenant.
const RESERVED_FDS_PER_TENANT: usize = 8;
/// The connection cap is never set below this.
const MIN_CONNECTIONS: usize = 16;
/// Refusals (503 replies) that may wait for the refused client's request;
/// past this a refused connection gets its reply and is closed at once.
/// Part of `RESERVED_FDS`.
const MAX_REFUSALS_IN_FLIGHT: usize = 32;

/// Why a connection or stream was refused (the `reason` label of
/// `walcast_http_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerIp,
    MaxStreamsPerTenant,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
            Refusal::MaxStreamsPerTenant => "max_streams_per_tenant",
        }
    }
}

/// The open-file limit, after raising the soft limit to the hard one (as
/// servers commonly do: the soft limit is often a 1024 left from
/// `select()`'s days, the hard one what the operator allowed).
pub fn raise_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur).ok()
}

/// The default connection cap for a file limit and tenant count.
pub fn default_max_connections(file_limit: Option<usize>, tenants: usize) -> usize {
    let reserve = RESERVED_FDS + RESERVED_FDS_PER_TENANT * tenants;
    match file_limit {
        Some(limit) => limit.saturating_sub(reserve).max(MIN_CONNECTIONS),
        // No limit known (not seen on Linux): a conservative cap.
        None => 1024,
    }
}

/// The caps of one server (shared by its client listeners).
pub struct Admission {
    /// Which listeners: the `listener` label of `walcast_http_connections`.
    listener: &'static str,
    connections: Arc<Semaphore>,
    max_connections: usize,
    per_ip: Option<usize>,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
    refusals: Arc<Semaphore>,
    log: RateLimitedLog,
}

/// One admitted connection's place; given back on drop.
pub struct Ticket {
    _permit: OwnedSemaphorePermit,
    ip: Option<IpAddr>,
    admission: Arc<Admission>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut by_ip = self
                .admission
                .by_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = by_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
        metrics::gauge!(crate::metrics::HTTP_CONNECTIONS, crate::metrics::LISTENER => self.admission.listener).decrement(1.0);
    }
}

impl Admission {
    /// Caps for the listeners named `listener` (`client`, `ops`).
    pub fn new(
        listener: &'static str,
        max_connections: usize,
        per_ip: Option<usize>,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            listener,
            connections: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            per_ip,
            by_ip: Mutex::new(HashMap::new()),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
            log: RateLimitedLog::default(),
        })
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// A place for a new connection from `ip`, or why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let permit = Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| self.refused(Refusal::MaxConnections))?;
        let ip = match self.per_ip {
            None => None,
            Some(cap) => {
                let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
                let n = by_ip.entry(ip).or_default();
                if *n >= cap {
                    drop(by_ip);
                    return Err(self.refused(Refusal::MaxConnectionsPerIp));
                }
                *n += 1;
                Some(ip)
            }
        };
        metrics::gauge!(crate::metrics::HTTP_CONNECTIONS, crate::metrics::LISTENER => self.listener).increment(1.0);
        Ok(Ticket {
            _permit: permit,
            ip,
            admission: Arc::clone(self),
        })
    }

    /// Counts a refusal and logs it (at most every few seconds).
    pub fn refused(&self, refusal: Refusal) -> Refusal {
        metrics::counter!(crate::metrics::HTTP_REFUSED, crate::metrics::REASON => refusal.as_str())
            .increment(1);
        self.log.warn(refusal.as_str(), self.max_connections);
        refusal
    }

    /// A place to write a refusal in, if not too many are being written.
    pub fn refusal_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.refusals).try_acquire_owned().ok()
    }
}

/// Streams (SSE responses, WebSocket sessions) open per tenant, against
/// `[server] max_streams_per_tenant`.
#[derive(Default)]
pub struct TenantStreams {
    cap: Option<usize>,
    open: Mutex<HashMap<Arc<str>, usize>>,
    log: RateLimitedLog,
}

/// One open stream of a tenant; given back on drop.
pub struct StreamTicket {
    tenant: Arc<str>,
    streams: Arc<TenantStreams>,
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl TenantStreams {
    pub fn new(cap: Option<usize>) -> Arc<TenantStreams> {
        Arc::new(TenantStreams {
            cap,
            ..TenantStreams::default()
        })
    }

    /// A place for one more stream of `tenant`, or the cap it would pass.
    pub fn open(self: &Arc<Self>, tenant: &Arc<str>) -> Result<StreamTicket, usize> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(Arc::clone(tenant)).or_default();
        if let Some(cap) = self.cap.filter(|cap| *n >= *cap) {
            drop(open);
            metrics::counter!(crate::metrics::HTTP_REFUSED, crate::metrics::REASON => Refusal::MaxStreamsPerTenant.as_str())
                .increment(1);
            self.log.warn(Refusal::MaxStreamsPerTenant.as_str(), cap);
            return Err(cap);
        }
        *n += 1;
        Ok(StreamTicket {
            tenant: Arc::clone(tenant),
            streams: Arc::clone(self),
        })
    }
}

/// A warning that is logged at most once per `LOG_EVERY`, with how many
/// were held back since the last one.
#[derive(Default)]
pub struct RateLimitedLog {
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl RateLimitedLog {
    fn warn(&self, reason: &'static str, cap: usize) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let held_back = self.held_back.swap(0, Ordering::Relaxed);
        tracing::warn!(
            reason,
            cap,
            more_since_last_warning = held_back,
            "refusing client connections: a cap is reached (see [server] in docs/configuration.md)"
        );
    }

    /// Logs `message` with `error`, at most every few seconds.
    pub fn warn_error(&self, message: &'static str, error: &std::io::Error) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let held_back = self.held_back.swap(0, Ordering::Relaxed);
        tracing::warn!(%error, more_since_last_warning = held_back, "{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_keeps_room_for_the_database_sockets() {
        assert_eq!(
            default_max_connections(Some(200), 1),
            MIN_CONNECTIONS.max(200 - 136)
        );
        assert_eq!(default_max_connections(Some(65536), 10), 65536 - 208);
        assert_eq!(default_max_connections(Some(100), 4), MIN_CONNECTIONS);
    }

    #[test]
    fn caps_give_places_back() {
        let admission = Admission::new("client", 2, Some(1));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let first = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Refusal::MaxConnectionsPerIp));
        let second = admission.admit(b).unwrap();
        assert_eq!(admission.admit(c).err(), Some(Refusal::MaxConnections));
        drop(first);
        let _third = admission.admit(a).unwrap();
        drop(second);
        let _fourth = admission.admit(c).unwrap();

        let streams = TenantStreams::new(Some(1));
        let acme: Arc<str> = "acme".into();
        let globex: Arc<str> = "globex".into();
        let one = streams.open(&acme).unwrap();
        assert_eq!(streams.open(&acme).err(), Some(1));
        let _other = streams.open(&globex).unwrap();
        drop(one);
        streams.open(&acme).unwrap();
    }
}
