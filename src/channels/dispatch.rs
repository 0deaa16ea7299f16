//! The outbox dispatcher: claims due outbox rows (a lease in the store naming this
//! airlock instance, so each row is delivered by one replica), builds each row's
//! [`Notice`], hands it to its channel, and settles the row: delivered, retried with
//! exponential back-off, or given up after [`MAX_ATTEMPTS`]. Rows of one approval and
//! channel go out in order (the store only hands out the oldest undelivered one), so a
//! message is always posted before it is updated.
//!
//! Deliveries run as tasks of their own, bounded per channel: a channel that hangs or
//! fails holds up only its own rows, never the proxy, the API or another channel.

use super::{wants, Channel, ChannelError, Notice};
use crate::approvals::LifecycleEvent;
use crate::config::Channels;
use crate::state::Airlock;
use crate::store::{OutboxItem, Settle};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Attempts before a row is given up (about 17 minutes of back-off in all).
pub const MAX_ATTEMPTS: u32 = 10;
/// How long one delivery may take before it counts as failed (well within a lease,
/// with the wait for a slot).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a claimed row is this instance's; past it another replica may retry it.
const LEASE: Duration = Duration::from_secs(60);
/// How often the outbox is looked at without a nudge (retries, other replicas' rows).
const POLL: Duration = Duration::from_millis(500);
/// Deliveries in flight per channel.
const PER_CHANNEL: usize = 8;
/// Rows claimed at once.
const BATCH: usize = 64;
/// How long settled rows are kept (the audit log keeps the events for good).
const KEEP_SETTLED: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often settled rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The back-off before attempt `attempts + 1`: 1 s doubling to 5 minutes, with jitter.
pub fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempts.min(9)).min(Duration::from_secs(300));
    let jitter = rand::random::<u64>() % (base.as_millis() as u64 / 4 + 1);
    base + Duration::from_millis(jitter)
}

/// The channels built from one `channels:` config.
struct Built {
    cfg: Channels,
    channels: HashMap<&'static str, (Arc<dyn Channel>, Arc<Semaphore>)>,
}

/// Delivers the outbox.
pub struct Dispatcher {
    airlock: Arc<Airlock>,
    client: reqwest::Client,
    built: Mutex<Option<Arc<Built>>>,
}

impl Dispatcher {
    /// A dispatcher for `airlock`'s store and config.
    pub fn new(airlock: Arc<Airlock>) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            airlock,
            client: super::http_client(),
            built: Mutex::new(None),
        })
    }

    /// The channels of the config in force (rebuilt when `channels:` changed on reload).
    fn channels(&self) -> Arc<Built> {
        let snap = self.airlock.snapshot();
        let cfg = &snap.cfg().channels;
        let mut guard = match self.built.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(b) = guard.as_ref() {
            if &b.cfg == cfg {
                return b.clone();
            }
        }
        let channels = super::build(cfg, &self.client)
            .into_iter()
            .map(|c| (c.name(), (c, Arc::new(Semaphore::new(PER_CHANNEL)))))
            .collect();
        let b = Arc::new(Built {
            cfg: cfg.clone(),
            channels,
        });
        self.airlock.store.set_outbox_channels(cfg.names());
        *guard = Some(b.clone());
        b
    }

    /// Runs until `shutdown`: delivers due rows whenever nudged, and every
    /// [`POLL`] otherwise.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let kick = self.airlock.approvals.outbox_kick();
        // The store learns which channels to write rows for before any request.
        self.channels();
        tokio::spawn(async move {
            let mut pruned = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = kick.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = shutdown.cancelled() => return,
                }
                me.run_once().await;
                if pruned.elapsed() >= PRUNE_EVERY {
                    pruned = std::time::Instant::now();
                    me.prune().await;
                }
            }
        })
    }

    /// Deletes rows settled more than [`KEEP_SETTLED`] ago.
    async fn prune(&self) {
        let before = Utc::now() - chrono::Duration::from_std(KEEP_SETTLED).unwrap_or_default();
        match self.airlock.store.outbox_prune(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "pruned settled outbox rows"),
            Err(e) => tracing::warn!(error = %e, "could not prune the outbox"),
        }
    }

    /// Claims what is due now and starts delivering it; returns how many rows it
    /// claimed.
    pub async fn run_once(self: &Arc<Self>) -> usize {
        let built = self.channels();
        if built.channels.is_empty() {
            return 0;
        }
        let now = Utc::now();
        let lease = now + chrono::Duration::from_std(LEASE).unwrap_or_default();
        let instance = self.airlock.approvals.instance().to_string();
        let items = match self
            .airlock
            .store
            .outbox_claim(&instance, now, lease, BATCH)
            .await
        {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the notification outbox");
                return 0;
            }
        };
        let n = items.len();
        for item in items {
            let me = self.clone();
            let built = built.clone();
            tokio::spawn(async move {
                // A channel busy with slow deliveries: wait for a slot well within the
                // lease, else try again later (never two replicas on one row).
                let permit = match built.channels.get(item.channel.as_str()) {
                    Some((_, sem)) => {
                        match tokio::time::timeout(LEASE / 3, sem.clone().acquire_owned()).await {
                            Ok(p) => p.ok(),
                            Err(_) => {
                                let how = me.retry(&item, "the channel is busy".into());
                                me.settle(&item, how).await;
                                return;
                            }
                        }
                    }
                    None => None,
                };
                let how = me.deliver(&built, &item).await;
                drop(permit);
                me.settle(&item, how).await;
            });
        }
        n
    }

    /// Delivers one row; says how to settle it.
    async fn deliver(&self, built: &Built, item: &OutboxItem) -> Settle {
        let Some((channel, _)) = built.channels.get(item.channel.as_str()) else {
            return Settle::Done { outcome: "skipped" };
        };
        let store = &self.airlock.store;
        let approval = match store.approval(&item.approval_id).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                return Settle::Failed {
                    error: format!("no approval {}", item.approval_id),
                }
            }
            Err(e) => return self.retry(item, e.to_string()),
        };
        if !wants(&approval.policy.channels, channel.name()) {
            return Settle::Done { outcome: "skipped" };
        }
        let Some(event) = LifecycleEvent::from_audit(&item.event) else {
            return Settle::Done { outcome: "skipped" };
        };
        let snap = self.airlock.snapshot();
        let notice = match Notice::build(store.as_ref(), &snap, event, approval).await {
            Ok(n) => n,
            Err(e) => return self.retry(item, e.to_string()),
        };
        let message = match store.message_ref(&item.approval_id, channel.name()).await {
            Ok(m) => m,
            Err(e) => return self.retry(item, e.to_string()),
        };
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(
            DELIVERY_TIMEOUT,
            channel.deliver(&notice, message.as_deref()),
        )
        .await;
        let took = started.elapsed();
        match r {
            Ok(Ok(reference)) => {
                if let Some(r) = reference {
                    if let Err(e) = store
                        .set_message_ref(&item.approval_id, channel.name(), &r)
                        .await
                    {
                        tracing::warn!(error = %e, approval = %item.approval_id, channel = channel.name(), "could not store the message reference");
                    }
                }
                tracing::debug!(approval = %item.approval_id, channel = channel.name(), event = %item.event.event, ?took, "notification delivered");
                self.airlock
                    .metrics
                    .notification(channel.name(), "delivered");
                Settle::Done {
                    outcome: "delivered",
                }
            }
            Ok(Err(ChannelError::Permanent(e))) => {
                tracing::error!(approval = %item.approval_id, channel = channel.name(), error = %e, "notification refused; not retried");
                self.airlock.metrics.notification(channel.name(), "failed");
                Settle::Failed { error: e }
            }
            Ok(Err(ChannelError::Transient(e))) => self.retry(item, e),
            Err(_) => self.retry(item, format!("no answer within {DELIVERY_TIMEOUT:?}")),
        }
    }

    /// A failed attempt: retried after [`backoff`], or given up after
    /// [`MAX_ATTEMPTS`].
    fn retry(&self, item: &OutboxItem, error: String) -> Settle {
        let attempts = item.attempts + 1;
        if attempts >= MAX_ATTEMPTS {
            tracing::error!(approval = %item.approval_id, channel = %item.channel, attempts, error = %error, "notification given up");
            self.airlock.metrics.notification(&item.channel, "failed");
            return Settle::Failed { error };
        }
        let wait = backoff(item.attempts);
        tracing::warn!(approval = %item.approval_id, channel = %item.channel, attempts, error = %error, retry_in = ?wait, "notification failed; will retry");
        self.airlock.metrics.notification(&item.channel, "retried");
        Settle::Retry {
            at: Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
            error,
        }
    }

    async fn settle(&self, item: &OutboxItem, how: Settle) {
        let instance = self.airlock.approvals.instance();
        let done = matches!(how, Settle::Done { .. } | Settle::Failed { .. });
        if let Err(e) = self
            .airlock
            .store
            .outbox_settle(item.id, instance, Utc::now(), &how)
            .await
        {
            // The lease runs out and the row is tried again (perhaps delivered twice,
            // never lost).
            tracing::warn!(error = %e, approval = %item.approval_id, channel = %item.channel, "could not settle an outbox row");
        }
        if done {
            // The next row of this approval and channel may go now.
            self.airlock.approvals.outbox_kick().notify_one();
        }
    }
}
