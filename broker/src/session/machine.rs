//! The session's states and what moves it between them.
//!
//! A session waits for CONNECT (or STOMP), negotiates a version and heart-beats, logs the
//! client in and picks its virtual host; connected, it hands each request to the part of the
//! session that owns it; it ends with DISCONNECT, an ERROR, or the connection closing, and then
//! gives back everything it holds ([`Session::close`]). A request reaches the state machine
//! already read ([`Request`]); a frame that fails to read fails exactly as a request the state
//! machine refuses: an ERROR carrying the frame's receipt, and the end of the session.

use std::sync::Arc;

use stampede_protocol::{Command, Frame, Version, heartbeat, names};
use tracing::trace;

use super::request::{ConnectRequest, Request, SendRequest};
use super::resume::{Found, SESSION_RESUME_TOKEN, SESSION_RESUMED};
use super::subscriptions::Target;
use super::{Flow, Reply, Session, State};
use crate::destination::outbox::Outbox;
use crate::error::{ErrorKind, StompError};
use crate::security::Redacted;
use crate::security::auth::{Credentials, Operation, Principal};

impl Session {
    /// Handles one client frame.
    ///
    /// # Errors
    /// A [`StompError`] ends the session: the connection writes it as an ERROR frame and closes.
    pub async fn handle(&mut self, frame: Frame, replies: &mut Vec<Reply>) -> Result<Flow, StompError> {
        trace!(session = %self.id, frame = %Redacted(&frame), "frame received");
        let result = self.dispatch(&frame, replies).await;
        result.map_err(|e| e.for_frame(&frame))
    }

    async fn dispatch(&mut self, frame: &Frame, replies: &mut Vec<Reply>) -> Result<Flow, StompError> {
        let connecting = matches!(frame.command, Command::Connect | Command::Stomp);
        if self.state == State::AwaitingConnect && !connecting {
            return Err(StompError::new(
                format!("not connected: {} received before CONNECT", frame.command),
                "The first frame of a STOMP session must be CONNECT or STOMP.",
            ));
        }
        if self.state == State::Connected && connecting {
            return Err(StompError::new("already connected", "CONNECT may only be sent once per connection."));
        }
        match Request::read(frame, self.version)? {
            Request::Connect(connect) => return self.connect(connect, replies).await,
            Request::Send(send) => self.send_or_buffer(send, replies).await?,
            Request::Subscribe(subscribe) => self.subscribe(subscribe).await?,
            Request::Unsubscribe(unsubscribe) => self.unsubscribe(unsubscribe).await?,
            Request::Ack(ack) => self.ack_or_buffer(frame, ack).await?,
            Request::Begin(tx) => self.begin(tx)?,
            Request::Commit(tx) => self.commit(frame, tx, replies).await?,
            Request::Abort(tx) => self.abort(frame.command, tx)?,
            Request::Disconnect => {
                // The client-id is free before the RECEIPT leaves: a client that reconnects as
                // soon as its DISCONNECT is receipted must not find its own id still held.
                self.release_client_id();
                // A DISCONNECT ends the session for good: its token resumes nothing.
                self.forget_resume_token();
                self.receipt(frame, replies);
                return Ok(Flow::Disconnect);
            }
        }
        self.receipt(frame, replies);
        Ok(Flow::Continue)
    }

    fn receipt(&self, frame: &Frame, replies: &mut Vec<Reply>) {
        if let Some(receipt) = frame.headers.get_shared(names::RECEIPT) {
            replies.push(Reply::Frame(Frame::new(Command::Receipt).with_header(names::RECEIPT_ID, receipt.clone())));
        }
    }

    async fn connect(&mut self, request: ConnectRequest<'_>, replies: &mut Vec<Reply>) -> Result<Flow, StompError> {
        let offered = request.accept_version;
        let Some(version) = Version::negotiate(offered, &self.config.versions) else {
            let supported: Vec<&str> = self.config.versions.iter().map(|v| v.as_str()).collect();
            let mut error = StompError::new(
                "no common protocol version",
                format!(
                    "The client offered accept-version {:?}; this server supports {}.",
                    offered.unwrap_or("1.0"),
                    supported.join(",")
                ),
            );
            error.extra_headers.push((names::VERSION, supported.join(",")));
            return Err(error);
        };
        // The ERROR for a failed login is written in the client's version.
        self.version = version;
        let mut credentials =
            Credentials { login: request.login.map(str::to_owned), passcode: request.passcode.map(str::to_owned) };
        let no_credentials = credentials.login.is_none() && credentials.passcode.is_none();
        if let Some(upgrade) = self.upgrade_credentials.as_ref().filter(|_| no_credentials) {
            credentials = upgrade.clone();
        }
        let auth = Arc::clone(&self.config.auth);
        let principal = auth.authenticate(&credentials, self.peer).await?;
        let virtual_host = self.vhosts.resolve(request.host, principal.access.current()).to_owned();
        principal.may_use_vhost(&virtual_host)?;
        let router = self.vhosts.router(&virtual_host);
        let resumed = match request.resume_token {
            Some(token) => {
                let resume = Arc::clone(&self.config.resume);
                match resume.take(token, principal.name.as_deref(), &virtual_host).await? {
                    Found::Session(session) => Some(session),
                    Found::Unknown => None,
                }
            }
            None => None,
        };
        let resuming = resumed.is_some();
        let client_id = request.client_id.map(str::to_owned);
        if let Some(mut session) = resumed {
            // This connection's fresh session gives way to the resumed one, which keeps its id,
            // subscriptions, temporary queues and client-id; what belongs to the connection
            // (the peer, the upgrade's credentials) and to this CONNECT (version, heart-beat,
            // principal) is taken from here.
            std::mem::swap(self, &mut *session);
            self.peer = session.peer;
            self.upgrade_credentials = session.upgrade_credentials.take();
            self.version = version;
            self.resume_subscriptions().await;
        } else if let Some(client_id) = &client_id {
            // ActiveMQ refuses a second live connection with the same client id: durable
            // subscriptions are named by it, so two holders would take each other's messages.
            if !router.claim_client_id(client_id) {
                return Err(StompError::of_kind(
                    ErrorKind::Authorization,
                    format!("client-id {client_id:?} is already in use"),
                    format!(
                        "Another connection on virtual host {virtual_host:?} holds client-id {client_id:?}; close it first or use another client-id."
                    ),
                ));
            }
            self.claimed_client_id = Some(client_id.clone());
        }
        self.router = router;
        self.heart_beat = heartbeat::negotiate(self.config.heart_beat, request.heart_beat);
        self.virtual_host = virtual_host;
        self.login = principal.name.clone();
        self.principal = Some(principal);
        if !resuming {
            self.client_id = client_id;
        }
        self.state = State::Connected;
        // The connection's log span (server::connection_span) says who this is from now on.
        let span = tracing::Span::current();
        span.record("vhost", self.virtual_host.as_str());
        if let Some(login) = &self.login {
            span.record("user", login.as_str());
        }
        // Only a client that asked (a `resume-token` header, empty the first time) gets a
        // resumable session: any other keeps today's behaviour, its unacknowledged messages
        // going back to the queue the moment its connection breaks.
        if request.resume_asked {
            let resume = Arc::clone(&self.config.resume);
            self.resume_token = resume.issue(self.user(), &self.virtual_host, &self.outbox);
        }
        let mut connected = Frame::new(Command::Connected)
            .with_header(names::VERSION, version.as_str())
            .with_header(names::SESSION, self.id.to_string())
            .with_header(names::SERVER, self.config.server_name.clone())
            .with_header(names::HEART_BEAT, self.config.heart_beat.to_header_value());
        if let Some(login) = &self.login {
            connected.headers.push("user-name", login.clone());
        }
        if let Some(token) = &self.resume_token {
            connected.headers.push(SESSION_RESUME_TOKEN, token.to_string());
        }
        if request.resume_asked {
            connected.headers.push(SESSION_RESUMED, if resuming { "true" } else { "false" });
        }
        replies.push(Reply::Frame(connected));
        Ok(Flow::Continue)
    }

    /// Connects this session as `principal`, already authenticated by someone else (the HTTP
    /// publish endpoint), to virtual host `host`, with the checks CONNECT makes after the login.
    ///
    /// # Errors
    /// The principal may not use that virtual host.
    pub fn connect_as(&mut self, principal: Principal, host: &str) -> Result<(), StompError> {
        let virtual_host = self.vhosts.resolve(host, principal.access.current()).to_owned();
        principal.may_use_vhost(&virtual_host)?;
        self.router = self.vhosts.router(&virtual_host);
        self.virtual_host = virtual_host;
        self.login = principal.name.clone();
        self.principal = Some(principal);
        self.version = Version::V1_2;
        self.state = State::Connected;
        Ok(())
    }

    /// Handles `frame` (a SEND without a transaction) exactly as a client's SEND: the same
    /// destination checks, permissions, limits and routing. Returns the message's id; the
    /// queues' verdicts are pushed on `replies` as for a client.
    ///
    /// # Errors
    /// The SEND was refused (an ERROR for a client).
    pub async fn publish(&mut self, frame: &Frame, replies: &mut Vec<Reply>) -> Result<u64, StompError> {
        let request = SendRequest::read(frame)?;
        self.authorize(Operation::Write, &request.destination_value[..])?;
        self.send(request, replies).await
    }

    /// Checks the principal's rules for `destination`. A connection's own temporary queues are
    /// always allowed; `/amq/queue/x` is checked as `/queue/x`, the queue it names. A
    /// `/reply-queue/` name is a capability: whoever holds it may send a reply to it (that is
    /// how request/reply works, as in RabbitMQ), unless the user's rules name `/reply-queue/`
    /// destinations, in which case they decide; only the connection that created it may
    /// subscribe (checked where it is resolved).
    pub(super) fn authorize(&self, operation: Operation, destination: &str) -> Result<(), StompError> {
        let Some(principal) = &self.principal else { return Ok(()) };
        if destination.starts_with("/temp-queue/") {
            return Ok(());
        }
        if operation == Operation::Write
            && destination.starts_with("/reply-queue/")
            && !principal.rules_mention(&self.virtual_host, Operation::Write, "/reply-queue/")
        {
            return principal.check_token();
        }
        if let Some(name) = destination.strip_prefix("/amq/queue/") {
            return principal.check(&self.virtual_host, operation, &format!("/queue/{name}"));
        }
        // amq.topic is the exchange /topic/ uses, so /topic/ rules decide for it.
        if let Some(key) = destination.strip_prefix("/exchange/amq.topic/") {
            return principal.check(&self.virtual_host, operation, &format!("/topic/{key}"));
        }
        principal.check(&self.virtual_host, operation, destination)
    }

    /// A resumed session picks up where it was: its outbox is attached again (the gaps of its
    /// topic subscriptions noted for their next MESSAGE), what the client had not acknowledged
    /// is forgotten here and sent again by the queues, in order, with `redelivered:true`.
    async fn resume_subscriptions(&mut self) {
        let gaps = self.outbox.attach();
        self.ack_owner.clear();
        for (key, subscription) in &mut self.subscriptions {
            subscription.pending.clear();
            subscription.resumed = true;
            subscription.resume_gap = gaps.get(key).copied().unwrap_or(0);
            if let Target::Queue { queue, consumer } = &subscription.target {
                let _ = queue.resume_consumer(*consumer).await;
            }
        }
    }

    /// Parks the session for resumption, after its connection broke without DISCONNECT: it
    /// moves into the resume registry (leaving an empty, unconnected session here) and waits
    /// there for its client. Returns false, leaving the session as it was, when it cannot wait
    /// (not connected, resumption disabled, `session_resume_max_detached` reached); the caller
    /// then closes it as usual. Open transactions are aborted either way.
    pub async fn park(&mut self) -> bool {
        if self.state != State::Connected {
            return false;
        }
        let Some(token) = self.resume_token.clone() else { return false };
        let resume = Arc::clone(&self.config.resume);
        if resume.detached() >= resume.settings().max_detached {
            return false;
        }
        self.transactions.clear();
        self.transaction_bytes = 0;
        self.outbox.detach(resume.settings().buffer_bytes);
        for subscription in self.subscriptions.values() {
            if let Target::Queue { queue, consumer } = &subscription.target {
                let _ = queue.pause_consumer(*consumer).await;
            }
        }
        let placeholder =
            Session::new(Arc::clone(&self.id), Arc::clone(&self.config), Arc::clone(&self.vhosts), Outbox::new(0));
        let session = std::mem::replace(self, placeholder);
        match resume.park(&token, Box::new(session)) {
            Ok(()) => true,
            Err(session) => {
                *self = *session;
                false
            }
        }
    }

    fn forget_resume_token(&mut self) {
        if let Some(token) = self.resume_token.take() {
            self.config.resume.forget(&token);
        }
    }

    /// Releases everything the session holds: subscriptions (unacknowledged queue messages are
    /// redelivered to other consumers), open transactions (aborted), temporary queues (deleted).
    pub async fn close(&mut self) {
        self.forget_resume_token();
        self.outbox.close();
        self.transactions.clear();
        let keys: Vec<u64> = self.subscriptions.keys().copied().collect();
        for key in keys {
            self.detach(key).await;
        }
        for (_, queue) in self.temp_queues.drain() {
            self.router.delete_temporary_queue(queue.name(), &self.id).await;
        }
        self.release_client_id();
    }

    pub(super) fn release_client_id(&mut self) {
        if let Some(client_id) = self.claimed_client_id.take() {
            self.router.release_client_id(&client_id);
        }
    }
}
