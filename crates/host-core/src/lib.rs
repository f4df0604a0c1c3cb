//! `host_core`: the supervisor of a WebAssembly actor host, as a library.
//!
//! The `host-core` binary is its command line; the bench and the tests use
//! the same library (its control client above all). See ARCHITECTURE.md
//! for the map of its modules and the rules that keep calls flowing one
//! way.

pub mod child;
pub mod claims;
pub mod control;
pub mod events;
pub mod host;
pub mod keys;
pub mod lattice;
pub mod manifest;
pub mod par;
pub mod paths;
pub mod providers;
pub mod supervise;
pub mod worker;
