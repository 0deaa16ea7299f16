//! Slack's request signature: `X-Slack-Signature: v0=<hex>` is the HMAC-SHA256, keyed
//! with the app's signing secret, of `v0:{X-Slack-Request-Timestamp}:{raw body}`; the
//! timestamp must be within five minutes of now, either way. Pure (the clock is an
//! argument) and fail-closed: anything missing or malformed is refused, and the
//! signature is compared in constant time. Never reads the body as anything but bytes.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a request's timestamp may be from now, either way (seconds).
pub const WINDOW_SECS: i64 = 300;

/// Why a callback's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("X-Slack-Signature or X-Slack-Request-Timestamp is missing")]
    Missing,
    #[error("X-Slack-Request-Timestamp is not a Unix time")]
    BadTimestamp,
    #[error("X-Slack-Request-Timestamp is more than 5 minutes from now (stale or replayed)")]
    Stale,
    #[error("X-Slack-Signature is not v0=<64 hex digits>")]
    Malformed,
    #[error("X-Slack-Signature does not match the body (signing secret)")]
    Mismatch,
}

/// The `v0=<hex>` signature of `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v0={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length: `new_from_slice` never refuses one.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// Checks `signature` and `timestamp` (the headers' values) against `body` at `now`
/// (Unix seconds).
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
        return Err(SignatureError::Missing);
    };
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if now.abs_diff(ts) > WINDOW_SECS as u64 {
        return Err(SignatureError::Stale);
    }
    let hex_sig = signature
        .strip_prefix("v0=")
        .ok_or(SignatureError::Malformed)?;
    let given = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed)?;
    if given.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    mac(secret, timestamp, body)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slack's published example ("Verifying requests from Slack").
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const EXPECTED: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn slacks_published_example_signs_and_verifies() {
        assert_eq!(sign(SECRET, TS, BODY.as_bytes()), EXPECTED);
        let now = 1531420618 + 10;
        assert_eq!(
            verify(SECRET, Some(TS), Some(EXPECTED), BODY.as_bytes(), now),
            Ok(())
        );
    }

    #[test]
    fn a_changed_body_secret_or_signature_is_refused() {
        let now = 1531420618;
        let other_body = BODY.replace("roadrunner", "coyote");
        assert_eq!(
            verify(SECRET, Some(TS), Some(EXPECTED), other_body.as_bytes(), now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                "another secret",
                Some(TS),
                Some(EXPECTED),
                BODY.as_bytes(),
                now
            ),
            Err(SignatureError::Mismatch)
        );
        let flipped = EXPECTED.replace("a2114d", "a2114e");
        assert_eq!(
            verify(SECRET, Some(TS), Some(&flipped), BODY.as_bytes(), now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some(&EXPECTED[3..]), BODY.as_bytes(), now),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(SECRET, Some(TS), Some("v0=abc"), BODY.as_bytes(), now),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(SECRET, None, Some(EXPECTED), BODY.as_bytes(), now),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(SECRET, Some("soon"), Some(EXPECTED), BODY.as_bytes(), now),
            Err(SignatureError::BadTimestamp)
        );
    }

    #[test]
    fn the_window_is_five_minutes_either_way() {
        let ts = 1531420618;
        for (now, ok) in [
            (ts + 300, true),
            (ts - 300, true),
            (ts + 301, false),
            (ts - 301, false),
        ] {
            let r = verify(SECRET, Some(TS), Some(EXPECTED), BODY.as_bytes(), now);
            assert_eq!(r.is_ok(), ok, "now = ts {:+}", now - ts);
            if !ok {
                assert_eq!(r, Err(SignatureError::Stale));
            }
        }
    }
}
