//! How many requests may be held at once, in all and per agent. A slot is taken before
//! a held body is buffered, so the limits also bound the memory holds use.

use super::error::LimitReached;
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How many requests may be held at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimits {
    /// `limits.max_held`.
    pub total: usize,
    /// `limits.max_held_per_agent`: one agent cannot take every slot.
    pub per_agent: usize,
}

/// Held requests now, in all and per agent.
#[derive(Default)]
struct Counts {
    total: usize,
    by_agent: HashMap<String, usize>,
}

/// The held-request counter shared by every request.
#[derive(Clone)]
pub struct HeldSlots {
    counts: Arc<Mutex<Counts>>,
    metrics: Arc<Metrics>,
}

/// One held request's slot; released when dropped.
pub struct HeldSlot {
    slots: HeldSlots,
    agent: String,
}

impl HeldSlots {
    /// An empty counter.
    pub fn new(metrics: Arc<Metrics>) -> HeldSlots {
        HeldSlots {
            counts: Arc::new(Mutex::new(Counts::default())),
            metrics,
        }
    }

    /// Takes a slot for `agent` under `limits`, or says which limit is reached.
    pub fn reserve(&self, agent: &str, limits: HoldLimits) -> Result<HeldSlot, LimitReached> {
        let mut h = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if h.total >= limits.total {
            return Err(LimitReached::Total { held: h.total });
        }
        let mine = h.by_agent.get(agent).copied().unwrap_or(0);
        if mine >= limits.per_agent {
            return Err(LimitReached::PerAgent {
                agent: agent.to_string(),
                held: mine,
            });
        }
        h.total += 1;
        *h.by_agent.entry(agent.to_string()).or_insert(0) += 1;
        drop(h);
        self.metrics.held_now.inc();
        Ok(HeldSlot {
            slots: self.clone(),
            agent: agent.to_string(),
        })
    }
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        let mut h = self.slots.counts.lock().unwrap_or_else(|p| p.into_inner());
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.by_agent.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                h.by_agent.remove(&self.agent);
            }
        }
        self.slots.metrics.held_now.dec();
    }
}
