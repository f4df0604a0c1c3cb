//! `test_support`: what the workspace's tests, and the bench, would
//! otherwise each write again.
//!
//! - [`HostEnd`]: the host's end of a provider channel, driven by hand
//!   (send a message, read the next answer); [`in_memory`] serves a
//!   `shim::Provider` on an in-memory pipe behind one, and [`launch`] runs a
//!   real provider binary that connects to one over a Unix socket.
//! - [`FakeHost`]: a host's end that answers the provider's `CallActor`s
//!   with a handler, for providers that call actors (the httpserver).
//! - [`bootstrap`] and [`link`]: builders for `Bootstrap` and `Link`.
//! - [`free_port`]: TCP ports for listeners that nothing else takes.
//! - [`NatsServer`]: a real `nats-server` with JetStream, killed on drop.
//! - [`registry`]: a real `docker-registry` on loopback, for the OCI tests.
//! - [`cli`]: argument lists of the `host-core` commands that sign actors
//!   and pack providers.
//!
//! Helpers panic on failure, as a test would: they are for tests and for
//! the bench's harness, never for production code.

mod builders;
mod channel;
pub mod cli;
mod fake_host;
mod launch;
mod nats;
mod ports;
pub mod registry;

pub use builders::{bootstrap, link, link_del, BootstrapBuilder, LinkBuilder};
pub use channel::{in_memory, HostEnd, InMemory, MemHostEnd, DEFAULT_STEP};
pub use fake_host::{handler, ActorCall, FakeHost, Handler, Reply};
pub use launch::{launch, spawn_provider, Launched, SocketHostEnd, TempDir};
pub use nats::NatsServer;
pub use ports::{free_port, reservable_range};

/// A path as the text a command line or a `Bootstrap` carries.
fn path_text(path: &std::path::Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
        .to_owned()
}
