//! The time approvals are decided by. Production reads the system clock; tests that
//! run airlock in-process use [`Clock::tokio`], which follows tokio's clock, so an
//! expiry can be tested with `tokio::time::pause()` instead of waiting real minutes.

use chrono::{DateTime, Utc};

/// Where "now" comes from.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// Wall time at creation plus tokio's elapsed time (paused and advanced in tests).
    Tokio {
        base: DateTime<Utc>,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's time from now on.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            base: Utc::now(),
            start: tokio::time::Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { base, start } => {
                let elapsed = tokio::time::Instant::now().duration_since(*start);
                *base + chrono::Duration::from_std(elapsed).unwrap_or_default()
            }
        }
    }
}
