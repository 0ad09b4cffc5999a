//! Virtual hosts: each one a separate namespace of queues, topics, durable subscriptions,
//! temporary queues and dead-letter queues, in memory and in the store.
//!
//! A session picks its virtual host once, at CONNECT, from the `host` header, and from then on
//! talks only to that virtual host's [`Router`]; nothing a session does can name a destination
//! of another virtual host. Which `host` values are namespaces of their own is decided by the
//! configuration, not by clients: `/`, the `vhosts` list, and every virtual host a user's rules
//! name. Clients commonly send the server's host name as `host` (stomp.py does), so any other
//! value means `/` and existing clients keep working; a principal whose rules name a virtual
//! host explicitly (a token's `vhosts` claim) gets that namespace even if the file does not
//! list it, since its rules were written for it.
//!
//! Routers are created on first use and live as long as the broker. Message and subscriber ids
//! are broker-wide (one [`IdCounters`]), so ids never repeat across virtual hosts.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use stampede_storage::{Recovery, Store};

use crate::destination::queue::QueueSettings;
use crate::destination::router::{IdCounters, NameLimits, QueueOverride, Router};
use crate::http::metrics::Metrics;
use crate::security::auth::Access;

/// The virtual host of clients that name none.
pub const DEFAULT_VHOST: &str = "/";

/// How often idle queues are looked for: a queue is deleted within this much after its idle
/// expiry.
pub const IDLE_SWEEP: std::time::Duration = std::time::Duration::from_millis(250);

/// What every virtual host's router is built from.
/// What [`VirtualHosts::restore`] restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Stored messages, in every queue.
    pub messages: usize,
    /// Queues, in every virtual host.
    pub queues: usize,
    /// Durable topic subscriptions, in every virtual host.
    pub durable_subscriptions: usize,
}

#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Defaults of every queue.
    pub queue_settings: QueueSettings,
    /// `[queues.<name>]` overrides.
    pub queue_overrides: HashMap<String, QueueOverride>,
    /// Limits on the names clients create.
    pub limits: NameLimits,
    /// Where queue actors and their dead-letter moves are started, so shutdown can wait for
    /// exactly what runs.
    pub tasks: tokio_util::task::TaskTracker,
    /// The broker's counters, moved by queue actors.
    pub metrics: Arc<Metrics>,
    /// The cluster link, in cluster mode (`[cluster]`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// `[topics]` retention and the byte budget every virtual host shares.
    pub retention: Arc<crate::destination::retention::RetentionConfig>,
}

/// The broker's virtual hosts.
pub struct VirtualHosts {
    declared: BTreeSet<String>,
    settings: RouterSettings,
    store: Option<Arc<dyn Store>>,
    ids: Arc<IdCounters>,
    routers: RwLock<HashMap<String, Arc<Router>>>,
    default_router: Arc<Router>,
}

impl std::fmt::Debug for VirtualHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualHosts").field("declared", &self.declared).finish_non_exhaustive()
    }
}

impl VirtualHosts {
    /// Virtual hosts whose routers keep persistent messages in `store`. `declared` names the
    /// virtual hosts that are namespaces of their own (`/` always is).
    pub fn new(
        declared: BTreeSet<String>,
        settings: RouterSettings,
        store: Option<Arc<dyn Store>>,
    ) -> Arc<VirtualHosts> {
        let ids = Arc::new(IdCounters::new());
        let default_router = Router::for_vhost(DEFAULT_VHOST, settings.clone(), store.clone(), Arc::clone(&ids));
        let mut routers = HashMap::new();
        routers.insert(DEFAULT_VHOST.to_owned(), Arc::clone(&default_router));
        Arc::new(VirtualHosts { declared, settings, store, ids, routers: RwLock::new(routers), default_router })
    }

    /// In-memory virtual hosts with default limits (benchmarks, fuzzing, unit tests).
    pub fn in_memory(queue_settings: QueueSettings) -> Arc<VirtualHosts> {
        let settings = RouterSettings {
            queue_settings,
            queue_overrides: HashMap::new(),
            limits: NameLimits::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            metrics: Arc::default(),
            cluster: None,
            retention: Arc::default(),
        };
        VirtualHosts::new(BTreeSet::new(), settings, None)
    }

    /// The namespace a client asking for virtual host `host` (CONNECT's `host` header) uses,
    /// given what it may access.
    pub fn resolve<'a>(&self, host: &'a str, access: &Access) -> &'a str {
        if self.declared.contains(host) || access.vhosts.contains_key(host) { host } else { DEFAULT_VHOST }
    }

    /// The router of virtual host `name`, created on first use.
    pub fn router(&self, name: &str) -> Arc<Router> {
        if let Some(router) = self.routers.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Arc::clone(router);
        }
        let mut routers = self.routers.write().unwrap_or_else(|p| p.into_inner());
        let router = routers.entry(name.to_owned()).or_insert_with(|| {
            Router::for_vhost(name, self.settings.clone(), self.store.clone(), Arc::clone(&self.ids))
        });
        Arc::clone(router)
    }

    /// The router of virtual host `name` if it exists now (never creates one).
    pub fn existing_router(&self, name: &str) -> Option<Arc<Router>> {
        if name == DEFAULT_VHOST {
            return Some(Arc::clone(&self.default_router));
        }
        self.routers.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    /// The router of `/`.
    pub fn default_router(&self) -> &Arc<Router> {
        &self.default_router
    }

    /// Every router that exists now.
    pub fn routers(&self) -> Vec<Arc<Router>> {
        self.routers.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// Hands each stored queue and durable subscription to the router of its virtual host.
    /// Records stored before virtual hosts were kept belong to `/`. Returns what was restored,
    /// for the one start-up line about storage.
    pub fn restore(&self, recovery: Recovery) -> Restored {
        for problem in &recovery.problems {
            tracing::warn!(queue = %problem.queue, position = ?problem.position, kind = ?problem.kind,
                "damaged record set aside at start-up: {}", problem.detail);
        }
        let mut by_vhost: HashMap<String, Vec<stampede_storage::RecoveredQueue>> = HashMap::new();
        for queue in recovery.queues {
            let vhost = queue.record.vhost.clone().unwrap_or_else(|| DEFAULT_VHOST.to_owned());
            by_vhost.entry(vhost).or_default().push(queue);
        }
        let (mut messages, mut queues, mut durables) = (0, 0, 0);
        for (vhost, recovered) in by_vhost {
            let router = self.router(&vhost);
            messages += router.restore(recovered);
            queues += router.queues().len();
            durables += router.durable_subscription_count();
        }
        Restored { messages, queues, durable_subscriptions: durables }
    }

    /// Deletes the queues of every virtual host that outstayed their idle expiry
    /// ([`Router::expire_idle_queues`]), every [`IDLE_SWEEP`] until `shutdown`. Reading a
    /// queue's idleness is a few atomic loads, so a sweep of 10,000 queues costs microseconds,
    /// and nothing on the data path changes for it.
    pub fn spawn_idle_sweeper(
        self: &Arc<Self>,
        tasks: &tokio_util::task::TaskTracker,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let vhosts = Arc::clone(self);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(IDLE_SWEEP);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                for router in vhosts.routers() {
                    router.expire_idle_queues().await;
                }
            }
        });
    }

    /// Stops every queue actor of every virtual host, so their last writes reach the store, and
    /// waits (until `deadline`) for every task they started to end.
    pub async fn stop_queues(&self, deadline: tokio::time::Instant) {
        for router in self.routers() {
            router.stop_queues().await;
        }
        self.settings.tasks.close();
        if tokio::time::timeout_at(deadline, self.settings.tasks.wait()).await.is_err() {
            tracing::warn!(
                running = self.settings.tasks.len(),
                "shutdown deadline passed with queue tasks still running"
            );
        }
    }
}
