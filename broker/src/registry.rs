//! The registry of open client connections, for the management API and for draining.
//!
//! A connection registers when its task starts serving STOMP and leaves when the task ends,
//! so the registry never shows a connection that has gone (RabbitMQ's "ghost connections").
//! Those are the only two moments its lock is taken: nothing on the publish or delivery path
//! touches it. What a listing shows is read from a [`ConnectionEntry`] the connection task
//! updates as it goes: relaxed atomic adds once per loop turn (bytes and frames), a store of
//! the session's counts after it handles frames, and the session's identity written once at
//! CONNECT. Listing copies the entries' `Arc`s under the lock and serialises after releasing
//! it, so a page of 10,000 connections never holds up a connect or a disconnect for longer
//! than that copy.
//!
//! Closing a connection from outside (the API's `DELETE connections/{id}`, the drain on
//! SIGTERM) sets a request on its entry and wakes the connection through its outbox, which its
//! task already waits on: the task then sends the client an ERROR carrying the reason and
//! closes, exactly as for its own errors. No extra wait point is added to the connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::destination::outbox::Outbox;
use crate::error::ErrorKind;
use crate::http::metrics::TransportKind;

/// Who a connection is, learnt at CONNECT. Kept small, since every connection has one: the
/// virtual host's name is the router's own `Arc`.
#[derive(Debug, Clone)]
pub struct SessionIdentity {
    /// The user (`None`: anonymous).
    pub user: Option<Box<str>>,
    /// The virtual host.
    pub vhost: Arc<str>,
    /// The negotiated STOMP version.
    pub version: stampede_protocol::Version,
    /// Heart-beat the broker sends, in ms (0 = none).
    pub heartbeat_send_ms: u32,
    /// Heart-beat the broker expects, in ms (0 = none).
    pub heartbeat_receive_ms: u32,
}

/// Why a connection is being closed from outside, and the ERROR its client gets.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    /// The ERROR's kind (decides the WebSocket close code: [`ErrorKind::Shutdown`] is 1012).
    pub kind: ErrorKind,
    /// The ERROR's `message` header.
    pub message: String,
}

/// One open connection, as the registry sees it.
#[derive(Debug)]
pub struct ConnectionEntry {
    /// The session id (also the `session` header of CONNECTED).
    pub id: Arc<str>,
    /// The client's address.
    pub peer: SocketAddr,
    /// How it is connected.
    pub transport: TransportKind,
    /// When the socket was accepted, in ms since the Unix epoch.
    pub connected_at_ms: u64,
    outbox: Arc<Outbox>,
    identity: OnceLock<SessionIdentity>,
    /// Boxed: rare, and inline it would enlarge every entry.
    close: OnceLock<Box<CloseRequest>>,
    /// Where it is in the registry's list (kept up to date under the registry's lock).
    slot: AtomicUsize,
    /// Bytes read from the socket (WebSocket payloads for WebSocket).
    pub bytes_in: AtomicU64,
    /// Bytes written to the socket (before WebSocket framing).
    pub bytes_out: AtomicU64,
    /// STOMP frames received (heart-beats not counted).
    pub frames_in: AtomicU64,
    /// STOMP frames and heart-beats written.
    pub frames_out: AtomicU64,
    /// Subscriptions the session holds, as of its last turn.
    pub subscriptions: AtomicU32,
    /// Deliveries the client has not yet acknowledged, as of its last turn.
    pub pending_acks: AtomicU32,
}

impl ConnectionEntry {
    /// The session's identity, once it has sent CONNECT.
    pub fn identity(&self) -> Option<&SessionIdentity> {
        self.identity.get()
    }

    /// Records the session's identity (only the first call counts).
    pub fn set_identity(&self, identity: SessionIdentity) {
        let _ = self.identity.set(identity);
    }

    /// Bytes of deliveries waiting in the connection's outbox.
    pub fn outbox_bytes(&self) -> usize {
        self.outbox.queued_bytes()
    }

    /// Asks the connection to close with an ERROR saying `request.message`. Returns false when a
    /// close was already asked for (the first reason stands).
    pub fn request_close(&self, request: CloseRequest) -> bool {
        let first = self.close.set(Box::new(request)).is_ok();
        if first {
            self.outbox.wake();
        }
        first
    }

    /// The close asked for from outside, if any.
    pub fn close_requested(&self) -> Option<&CloseRequest> {
        self.close.get().map(|request| &**request)
    }

    /// Adds one loop turn's traffic.
    pub fn count_traffic(&self, bytes_in: usize, bytes_out: usize, frames_out: usize) {
        if bytes_in > 0 {
            self.bytes_in.fetch_add(bytes_in as u64, Ordering::Relaxed);
        }
        if bytes_out > 0 {
            self.bytes_out.fetch_add(bytes_out as u64, Ordering::Relaxed);
            self.frames_out.fetch_add(frames_out as u64, Ordering::Relaxed);
        }
    }
}

/// Every open client connection of the broker: a list rather than a map, since every
/// connection pays for its slot and only the rare lookup by id (an API request) needs a search.
#[derive(Debug, Default)]
pub struct ConnectionRegistry {
    entries: Mutex<Vec<Arc<ConnectionEntry>>>,
}

/// Removes its entry from the registry when dropped (the connection task holds it).
#[derive(Debug)]
pub struct Registration {
    registry: Arc<ConnectionRegistry>,
    /// The registered entry.
    pub entry: Arc<ConnectionEntry>,
}

impl Registration {
    /// Registers the connection again under `id` with `outbox`: a resumed session brings its
    /// own id and outbox, and the management API and closes from outside must reach those.
    pub fn rebind(&mut self, id: Arc<str>, outbox: Arc<Outbox>) {
        let (peer, transport) = (self.entry.peer, self.entry.transport);
        // The old entry leaves when it is dropped, by this assignment.
        *self = self.registry.register(id, peer, transport, outbox);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self.registry.lock();
        let slot = self.entry.slot.load(Ordering::Relaxed);
        if entries.get(slot).is_some_and(|entry| Arc::ptr_eq(entry, &self.entry)) {
            entries.swap_remove(slot);
            if let Some(moved) = entries.get(slot) {
                moved.slot.store(slot, Ordering::Relaxed);
            }
        }
    }
}

impl ConnectionRegistry {
    /// An empty registry.
    pub fn new() -> Arc<ConnectionRegistry> {
        Arc::new(ConnectionRegistry::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ConnectionEntry>>> {
        // Every critical section is one insert, remove or copy: poisoning leaves nothing torn.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a connection; it stays listed until the returned [`Registration`] is dropped.
    pub fn register(
        self: &Arc<Self>,
        id: Arc<str>,
        peer: SocketAddr,
        transport: TransportKind,
        outbox: Arc<Outbox>,
    ) -> Registration {
        let entry = Arc::new(ConnectionEntry {
            id: Arc::clone(&id),
            peer,
            transport,
            connected_at_ms: crate::destination::queue::now_ms(),
            outbox,
            identity: OnceLock::new(),
            close: OnceLock::new(),
            slot: AtomicUsize::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            subscriptions: AtomicU32::new(0),
            pending_acks: AtomicU32::new(0),
        });
        let mut entries = self.lock();
        entry.slot.store(entries.len(), Ordering::Relaxed);
        entries.push(Arc::clone(&entry));
        drop(entries);
        Registration { registry: Arc::clone(self), entry }
    }

    /// The connection `id`, if it is open.
    pub fn get(&self, id: &str) -> Option<Arc<ConnectionEntry>> {
        self.lock().iter().find(|entry| &*entry.id == id).cloned()
    }

    /// Every open connection now (the lock is held only to copy the handles).
    pub fn snapshot(&self) -> Vec<Arc<ConnectionEntry>> {
        self.lock().clone()
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_listed_until_its_registration_is_dropped() {
        let registry = ConnectionRegistry::new();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let registration = registry.register(Arc::from("a"), peer, TransportKind::Tcp, Outbox::new(1024));
        assert_eq!(registry.len(), 1);
        assert!(registry.get("a").is_some());
        drop(registration);
        assert!(registry.is_empty());
        assert!(registry.get("a").is_none());
    }

    #[test]
    fn removing_one_keeps_every_other_findable() {
        let registry = ConnectionRegistry::new();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut held: Vec<Option<Registration>> = (0..5)
            .map(|i| Some(registry.register(Arc::from(format!("c{i}")), peer, TransportKind::Tcp, Outbox::new(1))))
            .collect();
        held[1] = None;
        held[0] = None;
        held[4] = None;
        assert_eq!(registry.len(), 2);
        assert!(registry.get("c2").is_some() && registry.get("c3").is_some());
        held.clear();
        assert!(registry.is_empty());
    }

    #[test]
    fn the_first_close_reason_stands() {
        let registry = ConnectionRegistry::new();
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let registration = registry.register(Arc::from("a"), peer, TransportKind::Ws, Outbox::new(1024));
        let first = CloseRequest { kind: ErrorKind::Request, message: "first".into() };
        let second = CloseRequest { kind: ErrorKind::Shutdown, message: "second".into() };
        assert!(registration.entry.request_close(first));
        assert!(!registration.entry.request_close(second));
        assert_eq!(registration.entry.close_requested().map(|r| r.message.as_str()), Some("first"));
    }
}
