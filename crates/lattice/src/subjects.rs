//! Subjects of the lattice: the control interface under
//! `wasmbus.ctl.{lattice}`, events under `wasmbus.evt.{lattice}`, RPC under
//! `wasmbus.rpc.{lattice}`; which ones a host subscribes, in which queue
//! groups; and what an incoming control subject asks.

/// The control interface's default topic prefix.
pub const CTL_PREFIX: &str = "wasmbus.ctl";

/// `wasmbus.ctl.{lattice}.{rest}`.
pub fn ctl(lattice: &str, rest: &str) -> String {
    format!("{CTL_PREFIX}.{lattice}.{rest}")
}

/// One subscription of a host's control interface: a subject, and the
/// queue group when only one host of the lattice answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlSubscription {
    pub subject: String,
    pub queue_group: Option<String>,
}

/// Every control subscription of host `host_id`, as 0.82 makes them.
pub fn ctl_subscriptions(lattice: &str, host_id: &str) -> Vec<CtlSubscription> {
    let plain = |rest: String| CtlSubscription {
        subject: ctl(lattice, &rest),
        queue_group: None,
    };
    let grouped = |rest: &str, group: &str| CtlSubscription {
        subject: ctl(lattice, rest),
        queue_group: Some(ctl(lattice, group)),
    };
    vec![
        plain("registries.put".into()),
        plain("ping.hosts".into()),
        plain("auction.>".into()),
        plain(format!("cmd.{host_id}.*")),
        plain(format!("get.{host_id}.inv")),
        plain(format!("labels.{host_id}.*")),
        grouped("linkdefs.*", "linkdefs"),
        grouped("get.*", "get"),
        grouped("config.>", "config"),
        grouped("get.config.>", "get.config"),
    ]
}

/// What a control subject asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlVerb {
    PingHosts,
    Inventory,
    Links,
    Claims,
    LinkPut,
    LinkDel,
    Scale,
    StopActor,
    UpdateActor,
    StartProvider,
    StopProvider,
    StopHost,
    LabelPut,
    LabelDel,
    AuctionActor,
    AuctionProvider,
    RegistriesPut,
    ConfigPut {
        entity: String,
        key: String,
    },
    ConfigDel {
        entity: String,
        key: String,
    },
    ConfigClear {
        entity: String,
    },
    GetConfig {
        entity: String,
        key: Option<String>,
    },
    /// Anything else: answered `unsupported subject`.
    Unsupported,
}

/// What `subject` (received by a host of `lattice`) asks; host-specific
/// subjects name the host, checked by the caller.
pub fn parse_ctl(lattice: &str, subject: &str) -> (CtlVerb, Option<String>) {
    let prefix = format!("{CTL_PREFIX}.{lattice}.");
    let Some(rest) = subject.strip_prefix(&prefix) else {
        return (CtlVerb::Unsupported, None);
    };
    let parts: Vec<&str> = rest.split('.').collect();
    let host = |i: usize| parts.get(i).map(|h| (*h).to_owned());
    let verb = match parts.as_slice() {
        ["ping", "hosts"] => CtlVerb::PingHosts,
        ["get", "links"] => CtlVerb::Links,
        ["get", "claims"] => CtlVerb::Claims,
        ["get", "config", entity] => CtlVerb::GetConfig {
            entity: (*entity).to_owned(),
            key: None,
        },
        ["get", "config", entity, key] => CtlVerb::GetConfig {
            entity: (*entity).to_owned(),
            key: Some((*key).to_owned()),
        },
        ["get", _, "inv"] => return (CtlVerb::Inventory, host(1)),
        ["linkdefs", "put"] => CtlVerb::LinkPut,
        ["linkdefs", "del"] => CtlVerb::LinkDel,
        ["cmd", _, cmd] => {
            let verb = match *cmd {
                "scale" => CtlVerb::Scale,
                "sa" => CtlVerb::StopActor,
                "upd" => CtlVerb::UpdateActor,
                "lp" => CtlVerb::StartProvider,
                "sp" => CtlVerb::StopProvider,
                "stop" => CtlVerb::StopHost,
                _ => CtlVerb::Unsupported,
            };
            return (verb, host(1));
        }
        ["labels", _, "put"] => return (CtlVerb::LabelPut, host(1)),
        ["labels", _, "del"] => return (CtlVerb::LabelDel, host(1)),
        ["auction", "actor"] => CtlVerb::AuctionActor,
        ["auction", "provider"] => CtlVerb::AuctionProvider,
        ["registries", "put"] => CtlVerb::RegistriesPut,
        ["config", "put", entity, key] => CtlVerb::ConfigPut {
            entity: (*entity).to_owned(),
            key: (*key).to_owned(),
        },
        ["config", "del", entity, key] => CtlVerb::ConfigDel {
            entity: (*entity).to_owned(),
            key: (*key).to_owned(),
        },
        ["config", "del", entity] => CtlVerb::ConfigClear {
            entity: (*entity).to_owned(),
        },
        _ => CtlVerb::Unsupported,
    };
    (verb, None)
}

/// `wasmbus.evt.{lattice}`: every event.
pub fn events(lattice: &str) -> String {
    format!("wasmbus.evt.{lattice}")
}

/// `wasmbus.evt.{lattice}.{name}`: events of one type.
pub fn event(lattice: &str, name: &str) -> String {
    format!("wasmbus.evt.{lattice}.{name}")
}

/// Invocations of an actor; the queue group is the subject.
pub fn rpc_actor(lattice: &str, actor: &str) -> String {
    format!("wasmbus.rpc.{lattice}.{actor}")
}

/// Invocations of a provider under a link name; the queue group is the subject.
pub fn rpc_provider(lattice: &str, provider: &str, link_name: &str) -> String {
    format!("wasmbus.rpc.{lattice}.{provider}.{link_name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_subjects_parse_as_0_82_names_them() {
        let l = "default";
        let cases = [
            ("wasmbus.ctl.default.ping.hosts", CtlVerb::PingHosts, None),
            (
                "wasmbus.ctl.default.get.NH.inv",
                CtlVerb::Inventory,
                Some("NH"),
            ),
            ("wasmbus.ctl.default.get.links", CtlVerb::Links, None),
            ("wasmbus.ctl.default.get.claims", CtlVerb::Claims, None),
            (
                "wasmbus.ctl.default.cmd.NH.sa",
                CtlVerb::StopActor,
                Some("NH"),
            ),
            (
                "wasmbus.ctl.default.cmd.NH.lp",
                CtlVerb::StartProvider,
                Some("NH"),
            ),
            (
                "wasmbus.ctl.default.cmd.NH.zz",
                CtlVerb::Unsupported,
                Some("NH"),
            ),
            (
                "wasmbus.ctl.default.labels.NH.del",
                CtlVerb::LabelDel,
                Some("NH"),
            ),
            (
                "wasmbus.ctl.default.auction.provider",
                CtlVerb::AuctionProvider,
                None,
            ),
            ("wasmbus.ctl.other.ping.hosts", CtlVerb::Unsupported, None),
        ];
        for (subject, verb, host) in cases {
            assert_eq!(
                parse_ctl(l, subject),
                (verb, host.map(str::to_owned)),
                "{subject}"
            );
        }
        assert_eq!(
            parse_ctl(l, "wasmbus.ctl.default.config.del.ent").0,
            CtlVerb::ConfigClear {
                entity: "ent".into()
            }
        );
        assert_eq!(
            parse_ctl(l, "wasmbus.ctl.default.get.config.ent.k").0,
            CtlVerb::GetConfig {
                entity: "ent".into(),
                key: Some("k".into())
            }
        );
    }

    #[test]
    fn queue_groups_are_the_subject_without_its_wildcard() {
        let subs = ctl_subscriptions("l", "NH");
        let linkdefs = subs
            .iter()
            .find(|s| s.subject == "wasmbus.ctl.l.linkdefs.*")
            .unwrap();
        assert_eq!(
            linkdefs.queue_group.as_deref(),
            Some("wasmbus.ctl.l.linkdefs")
        );
        let inv = subs
            .iter()
            .find(|s| s.subject == "wasmbus.ctl.l.get.NH.inv")
            .unwrap();
        assert_eq!(inv.queue_group, None);
        assert_eq!(
            rpc_provider("l", "VP", "default"),
            "wasmbus.rpc.l.VP.default"
        );
    }
}
