//! Pure domain model: typed ids, the workspace lifecycle, organization policy and input
//! validation.
//!
//! Nothing here does I/O, reads the clock or draws random numbers: time (`now`) and fresh
//! ids are passed in, so every rule is deterministic in tests. Nothing here is serialized
//! either; stored records and API DTOs are separate types that convert to and from these.

pub mod ids;
pub mod lifecycle;
pub mod policy;
pub mod validate;

pub use ids::*;
pub use lifecycle::{Action, Desired, Lifecycle, LifecycleError, Phase, PhaseChange};
pub use policy::{ClassLimits, ClassSpec, Policy, RuleError, StopReason};
pub use validate::{FieldError, RepoSpec, RepoUrl};

/// A user's role in an organization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Manages members, policies, classes and integrations.
    Owner,
    /// Uses workspaces under the organization's policy.
    Member,
}

impl Role {
    /// The stable lowercase name used in storage and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }

    /// Parses the name produced by [`Role::as_str`]; anything else is `None`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// Panicking on an unexpected result is how a test fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn role_round_trips() {
        for role in [Role::Owner, Role::Member] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        assert_eq!(Role::Owner.as_str(), "owner");
        assert_eq!(Role::Member.as_str(), "member");
    }

    #[test]
    fn role_rejects_unknown_and_other_case() {
        assert_eq!(Role::parse(""), None);
        assert_eq!(Role::parse("admin"), None);
        assert_eq!(Role::parse("Owner"), None);
        assert_eq!(Role::parse(" member"), None);
    }
}
pub mod entities;
