//! Tokens already verified: an agent sends the same JWT on every request for its
//! lifetime, and checking its signature each time costs more than the rest of the
//! request (RSA or ECDSA verification). The caller a token named is kept, keyed by
//! the SHA-256 of the token's bytes, until the token's own `exp` (plus the leeway the
//! check allowed). Only tokens that verified (signature, issuer, audience, `nbf`) are
//! kept, so a stream of bad tokens cannot fill it, and it is bounded: when
//! full, it starts over. It lives in the [`super::Agents`] of one configuration, so a
//! reload empties it.
//!
//! As with any cache of verified tokens (Envoy's `jwt_authn` keeps one too), a token
//! signed with a key the IdP later withdraws stays valid here until it expires; a
//! reload forgets every token at once.

use super::Caller;
use dashmap::DashMap;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// Tokens kept at most.
const CAPACITY: usize = 4096;

/// Verified tokens and whom they named.
#[derive(Debug, Default)]
pub struct Verified {
    tokens: DashMap<[u8; 32], (Caller, u64)>,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verified {
    /// The caller `token` named, if it verified before and is still within its
    /// lifetime.
    pub fn get(&self, token: &str) -> Option<Caller> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let hit = self.tokens.get(&key)?;
        let (caller, until) = hit.value();
        if now_secs() <= *until {
            return Some(caller.clone());
        }
        drop(hit);
        self.tokens.remove(&key);
        None
    }

    /// Keeps what a token that just verified named, until `until` (Unix seconds: its
    /// `exp` plus the leeway).
    pub fn put(&self, token: &str, caller: &Caller, until: u64) {
        if self.tokens.len() >= CAPACITY {
            self.tokens.clear();
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.tokens.insert(key, (caller.clone(), until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::AuthKind;

    fn caller(id: &str) -> Caller {
        Caller {
            id: id.into(),
            owner: None,
            anonymous: false,
            auth: AuthKind::Jwt,
            acting_for: Some("alice@example.com".into()),
        }
    }

    #[test]
    fn kept_until_it_expires_and_bounded() {
        let v = Verified::default();
        assert!(v.get("t1").is_none());
        v.put("t1", &caller("a"), now_secs() + 60);
        assert_eq!(v.get("t1").unwrap().id, "a");
        assert!(v.get("t2").is_none(), "another token is not the same");
        v.put("t3", &caller("b"), now_secs() - 1);
        assert!(v.get("t3").is_none(), "expired: forgotten");
        for i in 0..CAPACITY + 10 {
            v.put(&format!("x{i}"), &caller("c"), now_secs() + 60);
        }
        assert!(v.tokens.len() <= CAPACITY);
    }
}
