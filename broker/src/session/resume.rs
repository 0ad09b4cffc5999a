//! Session resumption: a client whose connection broke gets its session back.
//!
//! Mobile and flaky networks drop sockets without a DISCONNECT. Instead of giving back what the
//! session held at once, the connection *parks* the session here for `session_resume_grace_ms`:
//! its subscriptions stay registered, its queue consumers keep their place and their
//! unacknowledged messages (paused: nothing new is handed to them), and topic messages keep
//! arriving in its outbox up to `session_resume_buffer_bytes`, the rest counted as a gap. A
//! client that sends CONNECT with `resume-token` set to the `session-resume-token` of its last
//! CONNECTED gets the parked session itself, moved into its new connection
//! ([`Session::resume`]); when the grace passes first, the reaper ([`ResumeRegistry::run_reaper`])
//! closes the session exactly as a closed connection would have.
//!
//! Tokens are 128 random bits from the operating system's CSPRNG, single-use (a resumed
//! session gets a new one), and bound to the user and virtual host that connected: presenting
//! one as anyone else is an ERROR and leaves the session alone. A token that is unknown here
//! (expired, used, never issued, or issued by another cluster node) gives a fresh session whose
//! CONNECTED says `session-resumed:false`; never a silent mix. A token whose session is still
//! connected takes it over: the old connection gets an ERROR and parks the session, and the new
//! one takes it.
//!
//! Every connected session has an entry (the token and a weak reference to its outbox, for a
//! takeover): one map insert at CONNECT and one removal at the end, nothing on the data path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Session;
use crate::destination::outbox::Outbox;
use crate::error::{ErrorKind, StompError};

/// How long a new connection waits for the connection still holding a session to hand it over.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Bytes of randomness in a token (128 bits).
const TOKEN_BYTES: usize = 16;

/// The configured limits of session resumption.
#[derive(Debug, Clone, Copy)]
pub struct ResumeSettings {
    /// How long a detached session waits for its client (`session_resume_grace_ms`); zero
    /// disables resumption (no tokens are issued).
    pub grace: Duration,
    /// Bytes of topic messages a detached session keeps (`session_resume_buffer_bytes`).
    pub buffer_bytes: usize,
    /// Most sessions detached at once (`session_resume_max_detached`); beyond it a broken
    /// connection's session is closed at once, as without resumption.
    pub max_detached: usize,
}

#[derive(Debug)]
struct Entry {
    user: Option<Box<str>>,
    vhost: Box<str>,
    state: EntryState,
}

#[derive(Debug)]
enum EntryState {
    /// Connected: the outbox is how a takeover tells its connection.
    Live(Weak<Outbox>),
    /// Detached until `until`.
    Parked { session: Box<Session>, until: Instant },
}

#[derive(Debug, Default)]
struct Entries {
    // SipHash (std's default): tokens are client input.
    by_token: HashMap<Box<str>, Entry>,
    parked: usize,
}

/// Every resumable session of the broker, by token.
#[derive(Debug)]
pub struct ResumeRegistry {
    settings: ResumeSettings,
    entries: Mutex<Entries>,
    /// Woken whenever a session is parked, for a takeover waiting for it.
    parked: Notify,
}

/// What CONNECT's `resume-token` found.
#[derive(Debug)]
pub(super) enum Found {
    /// The session, detached and now taken out of the registry.
    Session(Box<Session>),
    /// No such session here: the CONNECT gets a fresh one (`session-resumed:false`).
    Unknown,
}

impl ResumeRegistry {
    /// A registry with these limits.
    pub fn new(settings: ResumeSettings) -> Arc<ResumeRegistry> {
        Arc::new(ResumeRegistry { settings, entries: Mutex::default(), parked: Notify::new() })
    }

    /// The limits.
    pub fn settings(&self) -> ResumeSettings {
        self.settings
    }

    /// Whether tokens are issued at all.
    pub fn enabled(&self) -> bool {
        !self.settings.grace.is_zero()
    }

    /// Sessions detached now.
    pub fn detached(&self) -> usize {
        self.lock().parked
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // Every critical section is a map insert, lookup or removal: poisoning cannot leave it
        // half-changed.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new token for a session that just connected as `user` on `vhost`, or `None` when
    /// resumption is disabled (or the operating system's random source failed, which is logged
    /// and only costs that session its resumability).
    pub(super) fn issue(&self, user: Option<&str>, vhost: &str, outbox: &Arc<Outbox>) -> Option<Box<str>> {
        if !self.enabled() {
            return None;
        }
        let mut random = [0u8; TOKEN_BYTES];
        if let Err(error) = getrandom::fill(&mut random) {
            tracing::warn!(%error, "no random bytes for a session-resume-token; this session cannot be resumed");
            return None;
        }
        let mut token = String::with_capacity(TOKEN_BYTES * 2);
        for byte in random {
            token.push(char::from(HEX[usize::from(byte >> 4)]));
            token.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        let token: Box<str> = token.into();
        let entry =
            Entry { user: user.map(Box::from), vhost: vhost.into(), state: EntryState::Live(Arc::downgrade(outbox)) };
        self.lock().by_token.insert(token.clone(), entry);
        Some(token)
    }

    /// Forgets `token` (its session ended for good).
    pub(super) fn forget(&self, token: &str) {
        let mut entries = self.lock();
        if let Some(entry) = entries.by_token.remove(token)
            && matches!(entry.state, EntryState::Parked { .. })
        {
            entries.parked -= 1;
        }
    }

    /// Parks `session` under `token` until the grace passes. Gives the session back when it
    /// cannot wait (resumption disabled, too many detached, token unknown).
    pub(super) fn park(&self, token: &str, session: Box<Session>) -> Result<(), Box<Session>> {
        let mut entries = self.lock();
        if !self.enabled() || entries.parked >= self.settings.max_detached {
            return Err(session);
        }
        let until = Instant::now() + self.settings.grace;
        let Some(entry) = entries.by_token.get_mut(token) else { return Err(session) };
        entry.state = EntryState::Parked { session, until };
        entries.parked += 1;
        drop(entries);
        self.parked.notify_waiters();
        Ok(())
    }

    /// Takes the session `token` names for a CONNECT as `user` on `vhost`. A session still
    /// connected is taken over: its connection is told to hand it over, and this waits (at most
    /// [`TAKEOVER_WAIT`]) until it is parked.
    ///
    /// # Errors
    /// The token belongs to another user or virtual host, or the connection holding the session
    /// did not hand it over in time.
    pub(super) async fn take(&self, token: &str, user: Option<&str>, vhost: &str) -> Result<Found, StompError> {
        let deadline = Instant::now() + TAKEOVER_WAIT;
        loop {
            let notified = self.parked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut expired = None;
            {
                let mut entries = self.lock();
                let Some(entry) = entries.by_token.get(token) else { return Ok(Found::Unknown) };
                if entry.user.as_deref() != user || &*entry.vhost != vhost {
                    return Err(StompError::of_kind(
                        ErrorKind::Authorization,
                        "access denied - resume-token belongs to another user or virtual host",
                        "The session this resume-token names was opened by another user or on another virtual host; it was not resumed, and it was not changed. Connect without resume-token for a new session.",
                    ));
                }
                match &entry.state {
                    EntryState::Live(outbox) => match outbox.upgrade() {
                        Some(outbox) => outbox.take_over(),
                        None => {
                            entries.by_token.remove(token);
                            return Ok(Found::Unknown);
                        }
                    },
                    EntryState::Parked { until, .. } => {
                        let past = *until <= Instant::now();
                        let Some(Entry { state: EntryState::Parked { session, .. }, .. }) =
                            entries.by_token.remove(token)
                        else {
                            unreachable!("the entry was just seen parked under the lock")
                        };
                        entries.parked -= 1;
                        if !past {
                            return Ok(Found::Session(session));
                        }
                        expired = Some(session);
                    }
                }
            }
            if let Some(mut session) = expired {
                // The reaper had not got to it yet: the grace is over all the same.
                Box::pin(session.close()).await;
                return Ok(Found::Unknown);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(StompError::of_kind(
                    ErrorKind::Request,
                    "session still connected: its connection did not hand it over",
                    format!(
                        "The session this resume-token names is still held by another connection, which was asked to hand it over and did not within {TAKEOVER_WAIT:?}. Try again, or connect without resume-token."
                    ),
                ));
            }
        }
    }

    /// Takes out the parked sessions whose grace is over (`all`: every parked session). They
    /// stay boxed as they were parked: unboxing a large session only to close it is a copy.
    #[allow(clippy::vec_box)]
    fn take_expired(&self, all: bool) -> Vec<Box<Session>> {
        let now = Instant::now();
        let mut entries = self.lock();
        let due: Vec<Box<str>> = entries
            .by_token
            .iter()
            .filter(|(_, entry)| matches!(entry.state, EntryState::Parked { until, .. } if all || until <= now))
            .map(|(token, _)| token.clone())
            .collect();
        let mut sessions = Vec::with_capacity(due.len());
        for token in due {
            if let Some(Entry { state: EntryState::Parked { session, .. }, .. }) = entries.by_token.remove(&token) {
                entries.parked -= 1;
                sessions.push(session);
            }
        }
        sessions
    }

    /// Closes the sessions whose grace is over, as their connections would have: unacknowledged
    /// queue messages go back to their queues, temporary queues are deleted. Returns how many.
    pub async fn expire(&self) -> usize {
        let sessions = self.take_expired(false);
        let count = sessions.len();
        for mut session in sessions {
            debug!(session = %session.id, "resume grace over; session closed");
            Box::pin(session.close()).await;
        }
        count
    }

    /// Runs until `shutdown`: every tick closes the sessions whose grace is over; at shutdown
    /// closes every parked session. The broker spawns it on its task tracker.
    pub async fn run_reaper(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.enabled() {
            return;
        }
        // A tenth of the grace, between 10 ms and 1 s: the grace itself is enforced exactly at
        // CONNECT (an expired session is never resumed); the tick only bounds how late its
        // messages go back to their queues.
        let tick = (self.settings.grace / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => { self.expire().await; }
                () = shutdown.cancelled() => break,
            }
        }
        for mut session in self.take_expired(true) {
            Box::pin(session.close()).await;
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// CONNECT's header naming the session to resume.
pub(super) const RESUME_TOKEN: &str = "resume-token";
/// CONNECTED's header carrying the token of this session.
pub(super) const SESSION_RESUME_TOKEN: &str = "session-resume-token";
/// CONNECTED's header saying whether `resume-token` resumed a session (only when one was sent).
pub(super) const SESSION_RESUMED: &str = "session-resumed";
/// The header of the first MESSAGE of a subscription after resumption when topic messages were
/// dropped while it was detached: how many.
pub(super) const RESUME_GAP: &str = "x-resume-gap";

/// Whether `token` looks like a token this broker issues (its length and alphabet only).
pub(super) fn is_well_formed(token: &str) -> bool {
    token.len() == TOKEN_BYTES * 2 && token.bytes().all(|b| HEX.contains(&b))
}
