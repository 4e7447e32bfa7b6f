//! Node roles and their certificate organizational units.

/// OU of worker certificates.
pub const WORKER_OU: &str = "swarm-worker";
/// OU of manager certificates.
pub const MANAGER_OU: &str = "swarm-manager";
/// The CA's name: a DNS SAN of manager certificates and the TLS server name of the CA.
/// It is never an OU.
pub const CA_ROLE: &str = "swarm-ca";

/// The role a node certificate grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A worker node (`NodeRole::WORKER`, OU `swarm-worker`).
    Worker,
    /// A manager node (`NodeRole::MANAGER`, OU `swarm-manager`).
    Manager,
}

impl Role {
    /// The OU written into certificates of this role.
    pub fn ou(self) -> &'static str {
        match self {
            Self::Worker => WORKER_OU,
            Self::Manager => MANAGER_OU,
        }
    }

    /// Maps an OU to a role, ignoring ASCII case (SwarmKit `FormatRole`).
    pub fn from_ou(s: &str) -> Option<Role> {
        if s.eq_ignore_ascii_case(WORKER_OU) {
            Some(Self::Worker)
        } else if s.eq_ignore_ascii_case(MANAGER_OU) {
            Some(Self::Manager)
        } else {
            None
        }
    }

    /// Maps a `NodeRole` protobuf value (0 = worker, 1 = manager) to a role.
    pub fn from_proto(v: i32) -> Option<Role> {
        match swarmca_types::NodeRole::try_from(v).ok()? {
            swarmca_types::NodeRole::Worker => Some(Self::Worker),
            swarmca_types::NodeRole::Manager => Some(Self::Manager),
        }
    }

    /// The `NodeRole` protobuf value of this role.
    pub fn to_proto(self) -> i32 {
        match self {
            Self::Worker => swarmca_types::NodeRole::Worker as i32,
            Self::Manager => swarmca_types::NodeRole::Manager as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ou_round_trips_case_insensitively() {
        for role in [Role::Worker, Role::Manager] {
            assert_eq!(Role::from_ou(role.ou()), Some(role));
            assert_eq!(Role::from_ou(&role.ou().to_uppercase()), Some(role));
            assert_eq!(Role::from_proto(role.to_proto()), Some(role));
        }
        assert_eq!(Role::from_ou(CA_ROLE), None);
        assert_eq!(Role::from_ou(""), None);
        assert_eq!(Role::Worker.to_proto(), 0);
        assert_eq!(Role::Manager.to_proto(), 1);
        assert_eq!(Role::from_proto(2), None);
        assert_eq!(Role::from_proto(-1), None);
    }
}
