//! Where a call goes: one place resolves every target (an actor's call
//! out of the worker, a provider's call to an actor, a `ctl call`) to a
//! typed answer, checking the caller's claims on the way. A lattice adds
//! its remote case here, not in the supervisors.

use std::sync::Arc;

use wire::CallError;

use super::links::{LinkKey, LinkStore};
use super::registry::Registry;
use super::remote::{Remote, RemoteTarget};

/// Contracts the worker answers itself; host-core never sees their calls.
pub const BUILTINS: [&str; 2] = ["wasmcloud:builtin:logging", "wasmcloud:builtin:numbergen"];

/// The link name of a call that names none.
pub const DEFAULT_LINK: &str = "default";

/// Which providers this host runs.
pub trait ProviderDirectory {
    /// Whether this host runs provider `key` under `link_name` (starting,
    /// running or restarting: not failed).
    fn runs(&self, key: &str, link_name: &str) -> bool;
}

/// The answer for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An actor running on this host.
    Actor(Arc<str>),
    /// The provider linked for this contract and link name (running here,
    /// or not: its supervisor says).
    Provider {
        provider_id: String,
        link_name: String,
        contract_id: String,
    },
    /// A builtin the worker answers.
    Builtin(&'static str),
    /// An actor or provider of another host of the lattice.
    Remote(RemoteTarget),
}

/// Resolves targets against this host's actors and links, and the lattice
/// when the host has joined one.
pub struct Router<'a> {
    pub actors: &'a Registry,
    pub links: &'a dyn LinkStore,
    /// The providers this host runs.
    pub providers: &'a dyn ProviderDirectory,
    pub remote: Option<&'a dyn Remote>,
}

impl Router<'_> {
    /// An actor's call out: `namespace` is a contract id (then `binding`
    /// is the link name), or an actor's key or call alias. A contract
    /// must be in the caller's caps. Contracts are told apart from aliases
    /// by their `:`, which no call alias may contain, so no actor can take
    /// another's provider calls by its alias.
    pub fn host_call(
        &self,
        caller: &str,
        binding: &str,
        namespace: &str,
    ) -> Result<Target, CallError> {
        if let Some(builtin) = BUILTINS.iter().find(|b| **b == namespace) {
            return Ok(Target::Builtin(builtin));
        }
        if is_contract_id(namespace) {
            let allowed = self.actors.with(caller, |r| r.has_cap(namespace));
            return match allowed {
                None => Err(CallError::unavailable(format!(
                    "actor {caller} is not running on this host"
                ))),
                Some(false) => Err(CallError::denied(format!(
                    "actor {caller} is not allowed to call {namespace}: the contract is not in its claims' caps"
                ))),
                Some(true) => {
                    let link_name = if binding.is_empty() { DEFAULT_LINK } else { binding };
                    let key = LinkKey::new(caller, namespace, link_name);
                    let link = self.links.get(&key).ok_or_else(|| {
                        CallError::not_found(format!("no link for {key}"))
                    })?;
                    // A provider this host runs takes it here; one that
                    // runs elsewhere, over the lattice.
                    if self.remote.is_some()
                        && !self.providers.runs(&link.provider_id, &link.link_name)
                    {
                        return Ok(Target::Remote(RemoteTarget::Provider {
                            provider_id: link.provider_id,
                            link_name: link.link_name,
                            contract_id: link.contract_id,
                        }));
                    }
                    Ok(Target::Provider {
                        provider_id: link.provider_id,
                        link_name: link.link_name,
                        contract_id: link.contract_id,
                    })
                }
            };
        }
        self.actor(namespace)
    }

    /// A call to an actor by key or call alias (`ctl call`): one of this
    /// host's, else one the lattice knows.
    pub fn actor(&self, target: &str) -> Result<Target, CallError> {
        if let Some(key) = self.actors.resolve(target) {
            return Ok(Target::Actor(key));
        }
        self.remote_actor(target).ok_or_else(|| not_running(target))
    }

    /// `target` (a key, or an alias the lattice knows) on another host.
    fn remote_actor(&self, target: &str) -> Option<Target> {
        let remote = self.remote?;
        let key = if looks_like_key(target) && target.starts_with('M') {
            target.to_owned()
        } else {
            remote.actor_by_alias(target)?
        };
        Some(Target::Remote(RemoteTarget::Actor(key)))
    }

    /// A provider of `contract` calls the actor its link names: allowed
    /// when the actor's caps name the contract, as the 0.8x host required.
    /// An actor that is not running is unavailable (the link names it; it
    /// may come back), not unknown.
    pub fn from_provider(
        &self,
        provider: &str,
        contract: &str,
        actor: &str,
    ) -> Result<Target, CallError> {
        let Some(key) = self.actors.resolve(actor) else {
            // On another host, which checks the actor's caps itself.
            return self
                .remote_actor(actor)
                .ok_or_else(|| CallError::unavailable(not_running(actor).message));
        };
        let allowed = self.actors.with(&key, |r| r.has_cap(contract));
        if allowed != Some(true) {
            return Err(CallError::denied(format!(
                "actor {key} does not accept calls from {contract} (provider {provider}): the contract is not in its claims' caps"
            )));
        }
        Ok(Target::Actor(key))
    }
}

pub fn not_running(key: &str) -> CallError {
    CallError::not_found(format!("no actor {key} is running on this host"))
}

/// Contract ids look like `wasmcloud:keyvalue`; keys and call aliases
/// never hold a `:`.
pub fn is_contract_id(namespace: &str) -> bool {
    namespace.contains(':')
}

/// Why `alias` cannot be an actor's call alias, if it cannot: it must not
/// look like a contract id or an nkey, and must be a short plain name
/// (letters, digits, `-`, `_`, `.`, `/`), as wasmCloud's are
/// (`wasmcloud/echo`).
pub fn check_call_alias(alias: &str) -> Result<(), String> {
    if alias.is_empty() || alias.len() > 128 {
        return Err(format!(
            "call alias `{alias}` must be 1 to 128 characters long"
        ));
    }
    if is_contract_id(alias) {
        return Err(format!(
            "call alias `{alias}` looks like a contract id (it has a `:`)"
        ));
    }
    if looks_like_key(alias) {
        return Err(format!("call alias `{alias}` looks like an nkey"));
    }
    if let Some(bad) = alias
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err(format!(
            "call alias `{alias}` has the character {bad:?}: use letters, digits, `-`, `_`, `.` and `/`"
        ));
    }
    Ok(())
}

/// 56 upper-case letters and digits starting with one of nkeys' prefixes.
pub fn looks_like_key(text: &str) -> bool {
    text.len() == 56
        && text.starts_with(['A', 'C', 'M', 'N', 'O', 'U', 'V', 'X'])
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_that_could_take_other_calls_are_refused() {
        assert!(check_call_alias("wasmcloud/echo").is_ok());
        assert!(check_call_alias("echoer").is_ok());
        for bad in [
            "",
            "wasmcloud:keyvalue",
            "wasmcloud:builtin:logging",
            &"M".repeat(56),
            "has space",
            "new\nline",
        ] {
            assert!(check_call_alias(bad).is_err(), "{bad:?}");
        }
    }
}
