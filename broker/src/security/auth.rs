//! Who may connect, and what they may do: users with argon2 password hashes, JSON Web Tokens,
//! per-destination read and write rules per virtual host, and a per-address delay that keeps
//! password guessing slow.
//!
//! With no users and no token keys configured the broker is *open*: every client is accepted,
//! with or without credentials, and may read and write everything. [`crate::server::start`]
//! refuses to run an open broker on a non-loopback address unless `allow_anonymous` is set.
//!
//! A failed login is always the same ERROR, `login failed`, whatever was wrong (unknown user,
//! wrong password, bad or expired token), and comes after a delay that doubles with each recent
//! failure from the same address (`auth_failure_delay_ms` up to `auth_failure_max_delay_ms`).
//! Unknown users are checked against a dummy hash so the answer takes as long as for a known
//! one.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::{Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{Config, JwtConfig, RuleConfig, UserConfig};
use crate::destination::topic::TopicPattern;
use crate::error::{ErrorKind, StompError};
use crate::security::{PermissionPattern, address_key};

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// SUBSCRIBE.
    Read,
    /// SEND.
    Write,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "read (subscribe)",
            Operation::Write => "write (send)",
        })
    }
}

/// Read and write patterns for one virtual host.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// Destinations that may be subscribed to.
    pub read: Vec<PermissionPattern>,
    /// Destinations that may be sent to.
    pub write: Vec<PermissionPattern>,
}

impl Rules {
    fn everything() -> Rules {
        Rules { read: vec![PermissionPattern::new("**")], write: vec![PermissionPattern::new("**")] }
    }

    fn from_lists(read: &[String], write: &[String]) -> Rules {
        Rules {
            read: read.iter().map(|p| PermissionPattern::new(p)).collect(),
            write: write.iter().map(|p| PermissionPattern::new(p)).collect(),
        }
    }

    fn allows(&self, operation: Operation, destination: &str) -> bool {
        let patterns = match operation {
            Operation::Read => &self.read,
            Operation::Write => &self.write,
        };
        match destination.strip_prefix("/topic/").and_then(TopicPattern::parse) {
            Some(topics) => patterns.iter().any(|p| p.covers_topic(&topics)),
            None => patterns.iter().any(|p| p.matches(destination)),
        }
    }
}

/// Everything a principal may do, per virtual host.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Rules for virtual hosts not listed in `vhosts`; `None` = only the listed ones.
    pub default: Option<Rules>,
    /// Rules per virtual host.
    pub vhosts: HashMap<String, Rules>,
    /// True when every operation is allowed everywhere (skips matching).
    pub unrestricted: bool,
    /// May use the management API and dashboard (`admin = true` in `[users.<name>]`, a token
    /// with the `stampede.admin` scope, or anyone on a broker without users). Kept here, shared
    /// per user, rather than in [`Principal`], which every connection holds.
    pub admin: bool,
    /// Set when a reload (SIGHUP) gave this user new rules, or removed the user (then to rules
    /// that allow nothing): sessions holding this value follow it at their next check, so a
    /// removed permission is gone from their next SEND or SUBSCRIBE. An atomic load per check,
    /// no lock.
    pub replaced: std::sync::OnceLock<Arc<Access>>,
}

impl Access {
    /// Everything, everywhere.
    pub fn unrestricted() -> Access {
        Access {
            default: Some(Rules::everything()),
            vhosts: HashMap::new(),
            unrestricted: true,
            admin: true,
            replaced: std::sync::OnceLock::new(),
        }
    }

    /// The rules in force: these, or those a reload replaced them with.
    pub fn current(&self) -> &Access {
        let mut access = self;
        while let Some(next) = access.replaced.get() {
            access = next;
        }
        access
    }

    /// The rules that apply on `vhost`, or `None` when the principal may not use it.
    pub fn rules_for(&self, vhost: &str) -> Option<&Rules> {
        self.vhosts.get(vhost).or(self.default.as_ref())
    }

    fn from_user(user: &UserConfig) -> Access {
        let rules = |r: &RuleConfig| Rules::from_lists(&r.read, &r.write);
        let unrestricted = user.vhosts.is_empty() && is_all(&user.read) && is_all(&user.write);
        Access {
            default: user.vhosts.is_empty().then(|| Rules::from_lists(&user.read, &user.write)),
            vhosts: user.vhosts.iter().map(|(name, r)| (name.clone(), rules(r))).collect(),
            unrestricted,
            admin: user.admin,
            replaced: std::sync::OnceLock::new(),
        }
    }
}

fn is_all(patterns: &[String]) -> bool {
    patterns.iter().any(|p| p == "**" || p == "#")
}

/// An authenticated client.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user name (the login, or a token's `sub`); `None` for an anonymous client.
    pub name: Option<String>,
    /// What it may do.
    pub access: Arc<Access>,
    /// When its token expires, in seconds since the epoch.
    pub expires_at: Option<u64>,
}

impl Principal {
    /// A client of an open broker: everything allowed.
    pub fn anonymous(name: Option<String>) -> Principal {
        // One shared value: every connection of an open broker holds the same rules.
        static UNRESTRICTED: std::sync::LazyLock<Arc<Access>> =
            std::sync::LazyLock::new(|| Arc::new(Access::unrestricted()));
        Principal { name, access: Arc::clone(&UNRESTRICTED), expires_at: None }
    }

    /// May use the management API and dashboard.
    pub fn is_admin(&self) -> bool {
        self.access.current().admin
    }

    /// Checks that the principal's token, if it came with one, has not expired since CONNECT.
    ///
    /// # Errors
    /// `access token expired`.
    pub fn check_token(&self) -> Result<(), StompError> {
        if self.expires_at.is_some_and(|expires_at| unix_now() >= expires_at) {
            return Err(token_expired());
        }
        Ok(())
    }

    /// True when one of the principal's `operation` rules on `vhost` is written for
    /// destinations starting with `prefix` (so those rules, not a default, decide about them).
    pub fn rules_mention(&self, vhost: &str, operation: Operation, prefix: &str) -> bool {
        self.access.current().rules_for(vhost).is_some_and(|rules| {
            let patterns = match operation {
                Operation::Read => &rules.read,
                Operation::Write => &rules.write,
            };
            patterns.iter().any(|p| p.as_str().starts_with(prefix))
        })
    }

    /// Checks that the principal may use virtual host `vhost` at all.
    ///
    /// # Errors
    /// `access refused` naming the virtual host.
    pub fn may_use_vhost(&self, vhost: &str) -> Result<(), StompError> {
        if self.access.current().rules_for(vhost).is_some() {
            return Ok(());
        }
        Err(StompError::of_kind(
            ErrorKind::Authorization,
            format!("access refused - virtual host {vhost:?}"),
            format!(
                "User {:?} may not use virtual host {vhost:?} (the CONNECT 'host' header).",
                self.name.as_deref().unwrap_or("")
            ),
        ))
    }

    /// Checks that the principal may perform `operation` on `destination` in `vhost`. A
    /// wildcard topic (`/topic/news.*`) is allowed only when one rule matches every topic it can
    /// match ([`PermissionPattern::covers_topic`]).
    ///
    /// # Errors
    /// An ERROR naming the destination and the operation when it may not, or when its token
    /// has expired since CONNECT.
    pub fn check(&self, vhost: &str, operation: Operation, destination: &str) -> Result<(), StompError> {
        self.check_token()?;
        let access = self.access.current();
        if access.unrestricted || access.rules_for(vhost).is_some_and(|rules| rules.allows(operation, destination)) {
            return Ok(());
        }
        let who = self.name.as_deref().unwrap_or("anonymous");
        let verb = match operation {
            Operation::Read => "subscribe to",
            Operation::Write => "send to",
        };
        let kind = match operation {
            Operation::Read => "read",
            Operation::Write => "write",
        };
        let reason = if destination.strip_prefix("/topic/").and_then(TopicPattern::parse).is_some() {
            format!(
                "no {kind} rule of this user matches every topic this wildcard can match (a rule's * stays within one word; only ** or # cover a # or > word)"
            )
        } else {
            format!("no {kind} rule of this user matches it")
        };
        Err(StompError::of_kind(
            ErrorKind::Authorization,
            format!("access denied - {operation} on {destination}"),
            format!("User {who:?} may not {verb} {destination} on virtual host {vhost:?}: {reason}."),
        ))
    }
}

/// The ERROR that ends a session whose token expired, whether noticed on a SEND or SUBSCRIBE or
/// by the connection's timer at the token's `exp`.
pub fn token_expired() -> StompError {
    StompError::of_kind(
        ErrorKind::Authentication,
        "access token expired",
        "The token given at CONNECT has expired; reconnect with a fresh token.",
    )
}

/// Credentials from CONNECT or from the WebSocket upgrade request. Debug output never shows the
/// passcode.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// The login (user name).
    pub login: Option<String>,
    /// The passcode: a password or a token.
    pub passcode: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .field("passcode", &self.passcode.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Credentials {
    /// Parses an HTTP `Authorization` header: `Basic base64(login:password)` or
    /// `Bearer <token>` (the token becomes the passcode).
    pub fn from_authorization(value: &str) -> Option<Credentials> {
        let (scheme, rest) = value.trim().split_once(' ')?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(Credentials { login: None, passcode: Some(rest.to_owned()) });
        }
        if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (login, password) = text.split_once(':')?;
            return Some(Credentials { login: Some(login.to_owned()), passcode: Some(password.to_owned()) });
        }
        None
    }

    fn is_empty(&self) -> bool {
        self.login.as_deref().is_none_or(str::is_empty) && self.passcode.as_deref().is_none_or(str::is_empty)
    }
}

struct User {
    hash: String,
    access: Arc<Access>,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User").field("access", &self.access).finish_non_exhaustive()
    }
}

/// Who may log in: the users with what they may do, and the keys tokens are checked with;
/// replaced whole by a reload, so a login never sees half of an old file and half of a new one.
#[derive(Debug, Default)]
struct Accounts {
    users: HashMap<String, User>,
    /// A hash to verify against for unknown users, with the parameters of a real one.
    dummy_hash: Option<String>,
    /// `[jwt]`: tokens given as the passcode are checked with these keys.
    jwt: Option<JwtVerifier>,
}

/// Decides who may connect.
#[derive(Debug)]
pub struct Authenticator {
    /// Read at each login (never on the publish path); a reload swaps it.
    table: std::sync::RwLock<Arc<Accounts>>,
    failures: FailureTracker,
    /// Failed logins since start (STOMP and HTTP), for metrics.
    failed: AtomicU64,
}

/// The configuration cannot be used for authentication.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A user's password hash is not an argon2 PHC string.
    #[error("user {user:?}: password_hash is not a valid argon2 hash ({reason}); make one with `stampede passwd`")]
    BadHash {
        /// The user.
        user: String,
        /// Why.
        reason: String,
    },
    /// A token key could not be read or parsed.
    #[error("jwt: {0}")]
    Jwt(String),
    /// A reload would turn authentication on or off, which needs a restart.
    #[error("{0}")]
    Reload(String),
}

impl Authenticator {
    /// An authenticator that accepts everyone.
    pub fn open() -> Authenticator {
        Authenticator {
            table: std::sync::RwLock::new(Arc::new(Accounts::default())),
            failures: FailureTracker::new(Duration::ZERO, Duration::ZERO, 0),
            failed: AtomicU64::new(0),
        }
    }

    /// Builds the authenticator from the configuration: parses every hash and key up front so
    /// a mistake stops the broker at start-up, not at the first login.
    ///
    /// # Errors
    /// A hash that is not argon2, or a token key that cannot be read.
    pub fn from_config(config: &Config) -> Result<Authenticator, AuthConfigError> {
        let table = Accounts::from_config(config)?;
        Ok(Authenticator {
            table: std::sync::RwLock::new(Arc::new(table)),
            failures: FailureTracker::new(
                Duration::from_millis(config.auth_failure_delay_ms),
                Duration::from_millis(config.auth_failure_max_delay_ms),
                config.auth_failure_tracked_addresses,
            ),
            failed: AtomicU64::new(0),
        })
    }

    fn table(&self) -> Arc<Accounts> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the users and their permissions with those of `config` (SIGHUP). Every hash is
    /// checked first, so a bad file changes nothing. Sessions of a user whose rules changed
    /// follow the new rules from their next SEND or SUBSCRIBE; those of a removed user may do
    /// nothing more. The token keys are read again too (a rotated key applies to the next
    /// login; connected sessions keep what their token granted). Returns the number of users now.
    ///
    /// # Errors
    /// A hash that is not argon2, or a change that would turn authentication on or off.
    pub fn reload(&self, config: &Config) -> Result<usize, AuthConfigError> {
        let new = Accounts::from_config(config)?;
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        if table.is_open() != new.is_open() {
            return Err(AuthConfigError::Reload(
                "the new configuration would turn authentication on or off (no users and no [jwt] before or after); that needs a restart".to_owned(),
            ));
        }
        for (name, old) in &table.users {
            let replacement =
                new.users.get(name).map_or_else(|| Arc::new(Access::default()), |user| Arc::clone(&user.access));
            let _ = old.access.replaced.set(replacement);
        }
        let count = new.users.len();
        *table = Arc::new(new);
        Ok(count)
    }
}

impl Accounts {
    fn from_config(config: &Config) -> Result<Accounts, AuthConfigError> {
        let mut users = HashMap::new();
        let mut first_params: Option<Params> = None;
        for (name, user) in &config.users {
            let parsed = PasswordHash::new(&user.password_hash)
                .map_err(|e| AuthConfigError::BadHash { user: name.clone(), reason: e.to_string() })?;
            let params = Params::try_from(&parsed)
                .map_err(|e| AuthConfigError::BadHash { user: name.clone(), reason: e.to_string() })?;
            first_params.get_or_insert(params);
            users.insert(
                name.clone(),
                User { hash: user.password_hash.clone(), access: Arc::new(Access::from_user(user)) },
            );
        }
        let dummy_hash = match first_params {
            Some(params) => Some(
                Argon2::from(params)
                    .hash_password(b"stampede dummy password for unknown users")
                    .map_err(|e| AuthConfigError::BadHash { user: String::new(), reason: e.to_string() })?
                    .to_string(),
            ),
            None => None,
        };
        let jwt = config.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        Ok(Accounts { users, dummy_hash, jwt })
    }

    /// True when everyone is accepted: no users and no token keys.
    fn is_open(&self) -> bool {
        self.users.is_empty() && self.jwt.is_none()
    }
}

impl Authenticator {
    /// True when no users and no token keys are configured: everyone is accepted.
    pub fn is_open(&self) -> bool {
        self.table().is_open()
    }

    /// Number of configured users.
    pub fn user_count(&self) -> usize {
        self.table().users.len()
    }

    /// True when tokens are accepted.
    pub fn accepts_tokens(&self) -> bool {
        self.table().jwt.is_some()
    }

    /// Authenticates a client. `peer` is its address, for the failure delay. Whether the
    /// principal may use the virtual host it asked for is [`Principal::may_use_vhost`].
    ///
    /// # Errors
    /// `login failed` (after the delay) when the credentials are not accepted.
    pub async fn authenticate(&self, credentials: &Credentials, peer: Option<IpAddr>) -> Result<Principal, StompError> {
        if self.is_open() {
            return Ok(Principal::anonymous(credentials.login.clone().filter(|l| !l.is_empty())));
        }
        match self.verify(credentials).await {
            Some(principal) => Ok(principal),
            None => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let delay = peer.map(|ip| self.failures.record(ip)).unwrap_or_default();
                let peer = peer.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
                let login = credentials.login.as_deref().unwrap_or("(none)");
                tracing::info!(%peer, login, ?delay, "login failed");
                tokio::time::sleep(delay).await;
                Err(StompError::of_kind(
                    ErrorKind::Authentication,
                    "login failed",
                    "The login, passcode or token was not accepted. Check the credentials and try again.",
                ))
            }
        }
    }

    async fn verify(&self, credentials: &Credentials) -> Option<Principal> {
        if credentials.is_empty() {
            return None;
        }
        let passcode = credentials.passcode.clone().unwrap_or_default();
        let table = self.table();
        if let Some(jwt) = table.jwt.as_ref().filter(|_| looks_like_jwt(&passcode)) {
            return jwt.verify(&passcode, credentials.login.as_deref());
        }
        let login = credentials.login.clone().unwrap_or_default();
        let user = table.users.get(&login);
        let hash = match user {
            Some(user) => user.hash.clone(),
            None => table.dummy_hash.clone()?,
        };
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| Argon2::default().verify_password(passcode.as_bytes(), &parsed).is_ok())
        })
        .await
        .unwrap_or(false);
        match user {
            Some(user) if matched => {
                Some(Principal { name: Some(login), access: Arc::clone(&user.access), expires_at: None })
            }
            _ => None,
        }
    }

    /// Failed logins since start.
    pub fn failure_count(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Recent failures from `ip` (for tests).
    pub fn failures_from(&self, ip: IpAddr) -> u32 {
        self.failures.count(ip)
    }
}

/// Prints nothing of the token: only whether it has the shape of one.
fn looks_like_jwt(text: &str) -> bool {
    text.starts_with("eyJ") && text.split('.').count() == 3
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Hashes a password for the `users` table (`stampede passwd`).
///
/// # Errors
/// When the system random source fails.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Hashes with the given argon2 parameters (memory in KiB, iterations); tests use small ones.
///
/// # Errors
/// When the parameters are out of range or the random source fails.
pub fn hash_password_with(password: &str, memory_kib: u32, iterations: u32) -> Result<String, String> {
    let params = Params::new(memory_kib, iterations, 1, None).map_err(|e| e.to_string())?;
    Argon2::from(params).hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Tokens

struct JwtVerifier {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_secs: u64,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// The claims Stampede reads from a token.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    /// OAuth 2 scopes: a space-separated string or a list, e.g. `stampede.read:/topic/**`.
    #[serde(default)]
    scope: Option<Scope>,
    /// `{"read": [...], "write": [...], "vhosts": [...]}`.
    #[serde(default)]
    stampede: Option<StampedeClaim>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scope {
    Text(String),
    List(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
struct StampedeClaim {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    vhosts: Option<Vec<String>>,
}

impl JwtVerifier {
    fn new(config: &JwtConfig) -> Result<JwtVerifier, AuthConfigError> {
        let hs256 = config.hs256_secret.as_ref().map(|secret| DecodingKey::from_secret(secret.as_bytes()));
        let rs256 = match &config.rs256_public_key_file {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| AuthConfigError::Jwt(format!("cannot read {}: {e}", path.display())))?;
                Some(
                    DecodingKey::from_rsa_pem(&pem)
                        .map_err(|e| AuthConfigError::Jwt(format!("{}: not an RSA public key: {e}", path.display())))?,
                )
            }
            None => None,
        };
        if hs256.is_none() && rs256.is_none() {
            return Err(AuthConfigError::Jwt("[jwt] needs hs256_secret or rs256_public_key_file".to_owned()));
        }
        Ok(JwtVerifier {
            hs256,
            rs256,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_secs: config.leeway_secs,
        })
    }

    /// What `jsonwebtoken` checks for a token signed with `algorithm`.
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// The token's principal, or `None` when it is not accepted: a signature by a configured
    /// key, `exp` in the future and `nbf` (when present) in the past, both within
    /// `leeway_secs`; `iss` present and equal to the configured issuer, and `aud` present and
    /// containing the configured audience, when those are configured;
    /// and no `crit` header, since Stampede understands no JWS extension (RFC 7515 §4.1.11:
    /// a critical extension the recipient does not understand makes the token invalid).
    fn verify(&self, token: &str, login: Option<&str>) -> Option<Principal> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.crit.is_some() {
            return None;
        }
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref()?,
            Algorithm::RS256 => self.rs256.as_ref()?,
            _ => return None,
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation(header.alg)).ok()?;
        let claims = data.claims;
        let mut read = Vec::new();
        let mut write = Vec::new();
        let mut admin = false;
        let scopes: Vec<String> = match claims.scope {
            Some(Scope::Text(text)) => text.split_whitespace().map(str::to_owned).collect(),
            Some(Scope::List(list)) => list,
            None => Vec::new(),
        };
        for scope in scopes {
            if let Some(pattern) = scope.strip_prefix("stampede.read:") {
                read.push(pattern.to_owned());
            } else if let Some(pattern) = scope.strip_prefix("stampede.write:") {
                write.push(pattern.to_owned());
            } else if scope == "stampede.admin" {
                admin = true;
            }
        }
        let claim = claims.stampede.unwrap_or_default();
        read.extend(claim.read);
        write.extend(claim.write);
        let rules = Rules::from_lists(&read, &write);
        let access = match claim.vhosts {
            Some(vhosts) => Access {
                default: None,
                vhosts: vhosts.into_iter().map(|v| (v, rules.clone())).collect(),
                unrestricted: false,
                admin,
                replaced: std::sync::OnceLock::new(),
            },
            None => Access {
                default: Some(rules),
                vhosts: HashMap::new(),
                unrestricted: false,
                admin,
                replaced: std::sync::OnceLock::new(),
            },
        };
        let name = claims.sub.or_else(|| login.filter(|l| !l.is_empty()).map(str::to_owned));
        Some(Principal {
            name,
            access: Arc::new(access),
            expires_at: Some(claims.exp.saturating_add(self.leeway_secs)),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Failure delay

/// Failures are forgotten this long after an address's last one.
const FAILURE_MEMORY: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct FailureTracker {
    base: Duration,
    max: Duration,
    capacity: usize,
    table: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailureTracker {
    fn new(base: Duration, max: Duration, capacity: usize) -> FailureTracker {
        FailureTracker { base, max, capacity, table: Mutex::new(HashMap::new()) }
    }

    /// Records a failure from `ip` and returns how long to wait before answering.
    fn record(&self, ip: IpAddr) -> Duration {
        if self.capacity == 0 {
            return self.base.min(self.max);
        }
        let key = address_key(ip);
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= self.capacity && !table.contains_key(&key) {
            table.retain(|_, (_, last)| now.duration_since(*last) < FAILURE_MEMORY);
            if table.len() >= self.capacity {
                // Still full of recent failures: forget an arbitrary eighth (keeps the table,
                // and the time spent on it, bounded whatever the number of addresses).
                let drop_count = (self.capacity / 8).max(1);
                let victims: Vec<IpAddr> = table.keys().take(drop_count).copied().collect();
                for victim in victims {
                    table.remove(&victim);
                }
            }
        }
        let entry = table.entry(key).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_MEMORY {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = entry.0.saturating_sub(1).min(20);
        self.base.saturating_mul(1u32 << doublings).min(self.max)
    }

    fn count(&self, ip: IpAddr) -> u32 {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).get(&address_key(ip)).map(|e| e.0).unwrap_or(0)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_delay_doubles_and_is_capped() {
        let tracker = FailureTracker::new(Duration::from_millis(100), Duration::from_millis(500), 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let delays: Vec<u128> = (0..5).map(|_| tracker.record(ip).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn failure_table_is_bounded() {
        let tracker = FailureTracker::new(Duration::from_millis(1), Duration::from_millis(1), 64);
        for i in 0..10_000u32 {
            tracker.record(IpAddr::from(i.to_be_bytes()));
        }
        assert!(tracker.len() <= 64);
    }

    #[test]
    fn basic_and_bearer_credentials_parse() {
        let basic = Credentials::from_authorization("Basic YWxpY2U6czNjcmV0").unwrap();
        assert_eq!(basic.login.as_deref(), Some("alice"));
        assert_eq!(basic.passcode.as_deref(), Some("s3cret"));
        let bearer = Credentials::from_authorization("Bearer abc.def.ghi").unwrap();
        assert_eq!(bearer.passcode.as_deref(), Some("abc.def.ghi"));
        assert!(!format!("{basic:?}").contains("s3cret"));
        assert!(Credentials::from_authorization("Digest x").is_none());
    }
}
