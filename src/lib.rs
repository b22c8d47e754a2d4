//! walcast streams Postgres changes to the programs and people that need them.
pub mod apply;
pub mod decode;
pub mod model;
