//! Builders for the messages a host hands a provider: its `Bootstrap` and
//! its links.

use std::path::Path;

use wire::provider::{Bootstrap, Link, ToProvider};

use crate::path_text;

/// A `Bootstrap` for provider `provider_key` of `contract_id`: link name
/// `default`, host `Nhost`, no socket (`"unused"`, for in-memory channels),
/// no token, no config, data in `/tmp`. Change what a test needs.
pub fn bootstrap(provider_key: &str, contract_id: &str) -> BootstrapBuilder {
    BootstrapBuilder(Bootstrap {
        socket: "unused".into(),
        token: String::new(),
        host_id: "Nhost".into(),
        provider_key: provider_key.into(),
        link_name: "default".into(),
        contract_id: contract_id.into(),
        config_json: String::new(),
        data_dir: "/tmp".into(),
    })
}

#[derive(Debug, Clone)]
pub struct BootstrapBuilder(Bootstrap);

impl BootstrapBuilder {
    /// The host socket the provider connects to.
    pub fn socket(mut self, socket: &Path) -> Self {
        self.0.socket = path_text(socket);
        self
    }

    pub fn token(mut self, token: &str) -> Self {
        self.0.token = token.into();
        self
    }

    pub fn config_json(mut self, config_json: &str) -> Self {
        self.0.config_json = config_json.into();
        self
    }

    pub fn data_dir(mut self, data_dir: &Path) -> Self {
        self.0.data_dir = path_text(data_dir);
        self
    }

    pub fn build(self) -> Bootstrap {
        self.0
    }
}

/// A link from `actor_id` to provider `provider_id` for `contract_id`,
/// link name `default`, no values.
pub fn link(actor_id: &str, provider_id: &str, contract_id: &str) -> LinkBuilder {
    LinkBuilder(Link {
        actor_id: actor_id.into(),
        provider_id: provider_id.into(),
        contract_id: contract_id.into(),
        link_name: "default".into(),
        values: Default::default(),
    })
}

#[derive(Debug, Clone)]
pub struct LinkBuilder(Link);

impl LinkBuilder {
    pub fn value(mut self, key: &str, value: &str) -> Self {
        self.0.values.insert(key.into(), value.into());
        self
    }

    pub fn build(self) -> Link {
        self.0
    }
}

/// The `LinkDel` that removes `link`.
pub fn link_del(link: &Link) -> ToProvider {
    ToProvider::LinkDel {
        actor_id: link.actor_id.clone(),
        contract_id: link.contract_id.clone(),
        link_name: link.link_name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_what_they_are_told_and_default_the_rest() {
        let boot = bootstrap("Vp", "wasmcloud:test")
            .config_json("{}")
            .data_dir(Path::new("/data"))
            .build();
        assert_eq!(
            (
                boot.socket.as_str(),
                boot.token.as_str(),
                boot.host_id.as_str()
            ),
            ("unused", "", "Nhost")
        );
        assert_eq!(
            (boot.config_json.as_str(), boot.data_dir.as_str()),
            ("{}", "/data")
        );
        let link = link("Ma", "Vp", "wasmcloud:test").value("k", "v").build();
        assert_eq!(link.values["k"], "v");
        assert!(matches!(
            link_del(&link),
            ToProvider::LinkDel { actor_id, link_name, .. } if actor_id == "Ma" && link_name == "default"
        ));
    }
}
