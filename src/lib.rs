//! walcast streams committed Postgres changes to the programs and people that
//! need them. For every tenant it reads a pgoutput logical replication slot,
//! decodes the changes into typed JSON events and hands them to a sink,
//! confirming each transaction to Postgres only once the sink has it.
//!
//! ```text
//!  tenant Postgres ──pgoutput slot──▶ source ──▶ decode ──▶ apply ──▶ sink ──▶ confirm(end_lsn)
//!   (regular conn: setup, checks,   (pgwire-     (pure,     (typed     (Redis mirror + stream,
//!    catalog look-ups, snapshot)     replication) no I/O)    JSON)      or stdout + memory ring)
//!                                                                        │ once durable
//!                                                                        ▼
//!                                   http (SSE, WebSocket, state) ◀── hub task (fanout, history)
//! ```
//!
//! One task per tenant (`tenant`) runs source → decode → apply → sink; decode
//! and apply are pure and run in that task. Modules, in the order data moves:
//!
//! - `cli`, `config`: arguments and the validated TOML configuration;
//! - `source`: the tenant's Postgres (setup, checks, catalog look-ups of
//!   column types, replication session);
//! - `decode`: pgoutput bytes → messages;
//! - `apply`: messages → numbered, typed `ChangeEvent`s, encoded once;
//! - `model`: plain data (`Lsn`, `EventId`, `ChangeEvent`);
//! - `sink`: where events go: the Redis mirror, stream and watermark
//!   (`sink::redis`), or standard output and an in-memory resume ring;
//! - `filter`: PostgREST-style row filters (mirror `hot_when`, access rules,
//!   subscriptions), typed by column kind;
//! - `tenant`: the per-tenant supervisor with back-off, the pipeline with
//!   group commit, and the initial snapshot;
//! - `auth`: who may read what: JWT → `Principal`, per-role table rules and
//!   row filters bound to claims (pure; used by the HTTP layer);
//! - `app`, `commands`, `demo`: wiring of `run`/`tail`, `check`/`setup`/`resync`, and `demo`;
//! - `hub`: delivery per tenant: subscriptions, the table-indexed fanout that
//!   the tenant's hub task publishes durable events to (fed by value through
//!   `model::HubFeed`), resume history, feeds, state reads;
//! - `http`: the HTTP server: the client API (SSE, WebSocket, state), the
//!   inspector page and the operations endpoints;
//! - `metrics`: metric names and descriptions;
//! - `report`: errors and panics as one line of text;
//! - `localdev`: throwaway local Postgres clusters and redis-servers (tests);
//! - `fault`: fault injection for the failure-containment tests (debug builds).

pub mod app;
pub mod apply;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod decode;
pub mod demo;
pub mod fault;
pub mod filter;
pub mod http;
pub mod hub;
pub mod localdev;
pub mod metrics;
pub mod model;
pub mod report;
pub mod sink;
pub mod source;
pub mod tenant;
