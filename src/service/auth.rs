//! Accounts and credentials: password and link login, sessions, API tokens, bootstrap of the
//! first owner, password reset. Secrets are random, shown once, and stored only as SHA-256
//! hashes; passwords are argon2id.

use std::num::NonZeroU32;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Actor, AuthVia, Cell, Error, Result, new_ulid};
use crate::domain::entities::{ApiToken, Class, LoginLink, Membership, Org, Session, User};
use crate::domain::validate::{validate_display_name, validate_email, validate_password};
use crate::domain::{ClassId, ClassSpec, OrgId, Policy, Role, TokenId, UserId};
use crate::store::Reader;

/// A fresh secret with a readable prefix naming its kind (`dct_` token, `dcs_` session...).
pub(crate) fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub(crate) fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(crate) fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
}

fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// Recently authenticated credentials, so that a burst of API calls does not read the token and
/// its user from the database for every request. Entries live two seconds at most, and every
/// change to credentials, users or memberships empties the cache, so revocation still takes
/// effect at once; each such change also moves `epoch`, which long-lived connections (terminals,
/// event streams, port tunnels) watch to check their caller again.
pub(crate) struct AuthCache {
    map: std::sync::Mutex<std::collections::HashMap<String, CachedAuth>>,
    epoch: tokio::sync::watch::Sender<u64>,
}

impl Default for AuthCache {
    fn default() -> Self {
        AuthCache {
            map: Default::default(),
            epoch: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// The actor, when its credential expires, and when it was cached.
type CachedAuth = (Actor, Option<OffsetDateTime>, std::time::Instant);

const AUTH_CACHE_TTL: Duration = Duration::from_secs(2);
const AUTH_CACHE_MAX: usize = 10_000;

impl AuthCache {
    fn get(&self, hash: &str, now: OffsetDateTime) -> Option<Actor> {
        let map = self.map.lock().ok()?;
        let (actor, expires, cached) = map.get(hash)?;
        if cached.elapsed() > AUTH_CACHE_TTL || expires.is_some_and(|e| e <= now) {
            return None;
        }
        Some(actor.clone())
    }

    fn put(&self, hash: String, actor: &Actor, expires: Option<OffsetDateTime>) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= AUTH_CACHE_MAX {
                map.clear();
            }
            map.insert(hash, (actor.clone(), expires, std::time::Instant::now()));
        }
    }

    pub(crate) fn clear(&self) {
        if let Ok(mut map) = self.map.lock() {
            map.clear();
        }
        self.epoch.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Limits login attempts at three levels, so that guessing is slow and nobody can lock an
/// account out for everyone: one address for one account (`per_minute`), one address for all
/// accounts (five times that: an office behind one address), and one account from all
/// addresses (twenty times that: a ceiling that takes many addresses to reach).
pub(crate) struct LoginLimiter {
    pair: DefaultKeyedRateLimiter<String>,
    address: DefaultKeyedRateLimiter<String>,
    account: DefaultKeyedRateLimiter<String>,
}

impl LoginLimiter {
    pub(crate) fn new(per_minute: u32) -> LoginLimiter {
        let quota = |times: u32| {
            let n = per_minute.max(1).saturating_mul(times);
            RateLimiter::keyed(Quota::per_minute(
                NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN),
            ))
        };
        LoginLimiter {
            pair: quota(1),
            address: quota(5),
            account: quota(20),
        }
    }

    /// Counts an attempt from `client` (an IP address) at `email`.
    fn check(&self, client: &str, email: &str) -> Result<()> {
        let client = address_key(client);
        for (limiter, key) in [
            (&self.pair, format!("{client} {email}")),
            (&self.address, client.clone()),
            (&self.account, email.to_owned()),
        ] {
            limiter.check_key(&key).map_err(|not_until| {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                Error::RateLimited {
                    retry_after_s: wait.as_secs().max(1),
                }
            })?;
        }
        Ok(())
    }
}

/// An IPv6 client is one /64 (one host usually has a whole /64 to pick addresses from).
fn address_key(client: &str) -> String {
    match client.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(std::net::IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map(|v4| v4.to_string())
            .unwrap_or_default(),
        _ => client.to_owned(),
    }
}

pub struct Credentials {
    pub email: String,
    pub password: String,
    /// The client's address, for rate limiting.
    pub client: String,
}

/// A new session: the cookie secret is shown only here.
pub struct LoginOutcome {
    pub secret: String,
    pub session: Session,
    pub user: User,
}

pub struct NewToken {
    pub secret: String,
    pub token: ApiToken,
}

/// The result of making sure the cell has an owner.
pub struct Bootstrap {
    pub owner: User,
    pub created: bool,
}

impl Cell {
    /// Moves after every change that may end someone's access: a credential revoked or expired
    /// early, a password changed, a membership removed or changed, a workspace given to another
    /// owner. Long-lived connections check their caller again when it moves.
    pub fn access_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.auth_cache.epoch.subscribe()
    }

    /// Resolves once `still` (the caller's credential and access, checked again) turns false:
    /// at once after each access change, and every 30 s for credentials that expire by
    /// themselves; or when the cell hands over to its next binary. Long-lived connections race
    /// it, so they close when their caller's access ends (or reconnect to the next process).
    pub async fn access_ends(&self, still: impl Fn(&Cell) -> bool) -> Ended {
        const RECHECK: Duration = Duration::from_secs(30);
        let mut changes = self.access_changes();
        let closing = self.closing();
        tokio::pin!(closing);
        loop {
            tokio::select! {
                _ = &mut closing => return Ended::Closing,
                r = changes.changed() => if r.is_err() { return Ended::Access },
                _ = tokio::time::sleep(RECHECK) => {}
            }
            if !still(self) {
                return Ended::Access;
            }
        }
    }

    /// Ends cached authentications and wakes whatever watches [`Cell::access_changes`].
    pub(crate) fn access_changed(&self) {
        self.inner.auth_cache.clear();
    }

    pub async fn login_password(&self, c: Credentials) -> Result<LoginOutcome> {
        let email = c.email.trim().to_lowercase();
        self.inner.limiter.check(&c.client, &email)?;
        let user = self.store().read(|tx| tx.user_by_email(&email))?;
        let hash = user.as_ref().and_then(|u| u.password_hash.clone());
        let password = c.password;
        // Verify even for unknown users so that timing does not reveal which emails exist.
        let ok = tokio::task::spawn_blocking(move || match hash {
            Some(h) => verify_password(&h, &password),
            None => {
                let _ = hash_password(&password);
                false
            }
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
        match user {
            Some(user) if ok => self.new_session_for(user),
            _ => Err(Error::BadCredentials),
        }
    }

    pub(crate) fn new_session_for(&self, user: User) -> Result<LoginOutcome> {
        let now = self.now();
        let secret = new_secret("dcs_");
        let session = Session {
            user: user.id.clone(),
            csrf: new_secret(""),
            created_at: now,
            expires_at: now + self.config().auth.session_ttl,
        };
        self.store()
            .write(|tx| tx.put_session(&hash_secret(&secret), &session))?;
        Ok(LoginOutcome {
            secret,
            session,
            user,
        })
    }

    /// Exchanges a one-time login link for a session; the link is gone afterwards.
    pub fn login_with_link(&self, secret: &str) -> Result<LoginOutcome> {
        let hash = hash_secret(secret);
        let now = self.now();
        let user = self.store().write(|tx| -> Result<User> {
            let link = tx.login_link(&hash)?.ok_or(Error::BadLink)?;
            tx.delete_login_link(&hash)?;
            if link.expires_at <= now {
                return Err(Error::BadLink);
            }
            tx.user(&link.user)?.ok_or(Error::BadLink)
        })?;
        self.new_session_for(user)
    }

    /// A one-time login link for `user`, as a path under the public URL.
    pub fn create_login_link(&self, user: &UserId) -> Result<String> {
        let now = self.now();
        let secret = new_secret("dcl_");
        let link = LoginLink {
            user: user.clone(),
            created_at: now,
            expires_at: now + self.config().auth.login_link_ttl,
        };
        self.store()
            .write(|tx| tx.put_login_link(&hash_secret(&secret), &link))?;
        Ok(self.link(&format!("login/link/{secret}")))
    }

    /// An absolute URL for a path of the dashboard.
    pub fn link(&self, path: &str) -> String {
        let base = self.config().public_url();
        let base = base.as_str().trim_end_matches('/');
        format!("{base}/{path}")
    }

    pub fn logout(&self, actor: &Actor) -> Result<()> {
        if let AuthVia::Session { hash, .. } = &actor.via {
            self.store().write(|tx| tx.delete_session(hash))?;
        }
        self.access_changed();
        Ok(())
    }

    /// Ends every session of the caller, on every device.
    pub fn logout_everywhere(&self, actor: &Actor) -> Result<usize> {
        let n = self
            .store()
            .write(|tx| tx.delete_sessions_of(&actor.user.id))?;
        self.access_changed();
        Ok(n)
    }

    pub fn authenticate_session(&self, secret: &str) -> Result<Actor> {
        self.authenticate_session_hash(hash_secret(secret))
    }

    /// The caller of a session known by the hash of its secret (port credentials carry the
    /// hash of the session they were issued from, so that they end with it).
    pub(crate) fn authenticate_session_hash(&self, hash: String) -> Result<Actor> {
        let now = self.now();
        if let Some(actor) = self.inner.auth_cache.get(&hash, now) {
            return Ok(actor);
        }
        let (session, user) = self
            .store()
            .read(|tx| {
                let Some(s) = tx.session(&hash)? else {
                    return Ok(None);
                };
                let u = tx.user(&s.user)?;
                Ok(u.map(|u| (s, u)))
            })?
            .ok_or(Error::Unauthenticated)?;
        if session.expires_at <= now {
            return Err(Error::Unauthenticated);
        }
        let actor = Actor {
            user,
            via: AuthVia::Session {
                hash: hash.clone(),
                csrf: session.csrf,
            },
        };
        self.inner
            .auth_cache
            .put(hash, &actor, Some(session.expires_at));
        Ok(actor)
    }

    pub fn authenticate_token(&self, secret: &str) -> Result<Actor> {
        let hash = hash_secret(secret);
        let now = self.now();
        if let Some(actor) = self.inner.auth_cache.get(&hash, now) {
            return Ok(actor);
        }
        let (mut token, user) = self
            .store()
            .read(|tx| {
                let Some(t) = tx.token(&hash)? else {
                    return Ok(None);
                };
                let u = tx.user(&t.user)?;
                Ok(u.map(|u| (t, u)))
            })?
            .ok_or(Error::Unauthenticated)?;
        if token.expires_at.is_some_and(|e| e <= now) {
            return Err(Error::Unauthenticated);
        }
        // Record use at most once a minute: a database write per request would cost more than the request.
        if token
            .last_used
            .is_none_or(|t| now - t > Duration::from_secs(60))
        {
            token.last_used = Some(now);
            self.store().write(|tx| tx.put_token(&hash, &token))?;
        }
        let actor = Actor {
            user,
            via: AuthVia::Token,
        };
        self.inner.auth_cache.put(hash, &actor, token.expires_at);
        Ok(actor)
    }

    /// Checks the CSRF token of a cookie-authenticated mutation.
    pub fn check_csrf(&self, actor: &Actor, presented: Option<&str>) -> Result<()> {
        match &actor.via {
            AuthVia::Session { csrf, .. } => {
                let ok = presented.is_some_and(|p| {
                    subtle::ConstantTimeEq::ct_eq(p.as_bytes(), csrf.as_bytes()).into()
                });
                if ok { Ok(()) } else { Err(Error::Csrf) }
            }
            AuthVia::Token | AuthVia::Local => Ok(()),
        }
    }

    pub fn create_token(
        &self,
        actor: &Actor,
        name: &str,
        expires_in: Option<Duration>,
    ) -> Result<NewToken> {
        // The same shape as a display name: 1 to 100 characters, none of them control ones.
        let name = crate::domain::validate::validate_display_name(name).map_err(|e| {
            crate::domain::FieldError::new(
                "name",
                format!("give the token a name of 1 to 100 characters: {}", e.reason),
            )
        })?;
        let name = name.as_str();
        if let Some(d) = expires_in
            && (d < Duration::from_secs(60) || d > Duration::from_secs(3 * 365 * 86400))
        {
            return Err(crate::domain::FieldError::new(
                "expires_in_s",
                "between one minute and three years",
            )
            .into());
        }
        self.issue_token(&actor.user.id, name, expires_in)
    }

    fn issue_token(
        &self,
        user: &UserId,
        name: &str,
        expires_in: Option<Duration>,
    ) -> Result<NewToken> {
        let now = self.now();
        let secret = new_secret("dct_");
        let token = ApiToken {
            id: TokenId::from_ulid(new_ulid()),
            user: user.clone(),
            name: name.to_owned(),
            created_at: now,
            expires_at: expires_in.map(|d| now + d),
            last_used: None,
        };
        self.store()
            .write(|tx| tx.put_token(&hash_secret(&secret), &token))?;
        Ok(NewToken { secret, token })
    }

    pub fn list_tokens(&self, actor: &Actor) -> Result<Vec<ApiToken>> {
        Ok(self
            .store()
            .read(|tx| tx.tokens_of(&actor.user.id))?
            .into_iter()
            .map(|(_, t)| t)
            .collect())
    }

    pub fn revoke_token(&self, actor: &Actor, id: &TokenId) -> Result<()> {
        self.store().write(|tx| -> Result<()> {
            let hash = tx
                .token_hash(&actor.user.id, id)?
                .ok_or(Error::NotFound { what: "token" })?;
            tx.delete_token(&hash)?;
            Ok(())
        })?;
        self.access_changed();
        Ok(())
    }

    /// Ensures the cell has an owner and a first organization; idempotent.
    pub async fn bootstrap(&self, email: &str, password: Option<&str>) -> Result<Bootstrap> {
        let existing = self
            .store()
            .read(|tx| Ok(tx.users()?.into_iter().find(|u| u.is_admin)))?;
        if let Some(owner) = existing {
            return Ok(Bootstrap {
                owner,
                created: false,
            });
        }
        let email = validate_email(email)?;
        let password_hash = match password {
            Some(p) => {
                validate_password(p)?;
                let p = p.to_owned();
                Some(
                    tokio::task::spawn_blocking(move || hash_password(&p))
                        .await
                        .map_err(|e| Error::Internal(e.to_string()))??,
                )
            }
            None => None,
        };
        let now = self.now();
        let owner = User {
            id: UserId::from_ulid(new_ulid()),
            email,
            name: "Owner".into(),
            password_hash,
            is_admin: true,
            created_at: now,
        };
        let org = Org {
            id: OrgId::from_ulid(new_ulid()),
            name: "Default".into(),
            policy: Policy::default(),
            created_at: now,
        };
        self.store().write(|tx| -> Result<()> {
            if tx.user_by_email(&owner.email)?.is_some() {
                return Err(Error::Conflict {
                    code: "email_taken",
                    message: format!("{} already has an account", owner.email),
                });
            }
            tx.put_user(&owner)?;
            tx.put_org(&org)?;
            tx.put_membership(&Membership {
                org: org.id.clone(),
                user: owner.id.clone(),
                role: Role::Owner,
                since: now,
            })?;
            for (i, class) in default_classes().into_iter().enumerate() {
                tx.put_class(&Class {
                    id: ClassId::from_ulid(new_ulid()),
                    org: org.id.clone(),
                    spec: class,
                    is_default: i == 0,
                    created_at: now,
                })?;
            }
            Ok(())
        })?;
        tracing::info!(owner = %owner.email, org = %org.id, "created the first owner and organization");
        Ok(Bootstrap {
            owner,
            created: true,
        })
    }

    /// The user named by email, or the first administrator.
    pub fn find_user(&self, email: Option<&str>) -> Result<User> {
        self.store()
            .read(|tx| match email {
                Some(e) => tx.user_by_email(&e.trim().to_lowercase()),
                None => Ok(tx.users()?.into_iter().find(|u| u.is_admin)),
            })?
            .ok_or(Error::NotFound { what: "user" })
    }

    /// Every account on the cell (cell administrators).
    pub fn list_users(&self, actor: &Actor) -> Result<Vec<User>> {
        self.require_admin(actor)?;
        Ok(self.store().read(|tx| tx.users())?)
    }

    /// Makes a user a cell administrator or not (cell administrators).
    pub fn set_cell_admin(&self, actor: &Actor, user: &UserId, admin: bool) -> Result<User> {
        self.require_admin(actor)?;
        self.grant_cell_admin(user, admin)
    }

    /// Makes a user a cell administrator or not; the cell keeps at least one.
    pub(crate) fn grant_cell_admin(&self, user: &UserId, admin: bool) -> Result<User> {
        let user = self.store().write(|tx| -> Result<User> {
            let mut u = tx.user(user)?.ok_or(Error::NotFound { what: "user" })?;
            if u.is_admin && !admin && !tx.users()?.iter().any(|o| o.is_admin && o.id != u.id) {
                return Err(Error::Conflict {
                    code: "last_admin",
                    message:
                        "the cell needs at least one administrator; make another user one first"
                            .into(),
                });
            }
            u.is_admin = admin;
            tx.put_user(&u)?;
            Ok(u)
        })?;
        self.access_changed();
        Ok(user)
    }

    /// Issues an API token without a login, for the local admin command.
    pub fn admin_token(&self, email: Option<&str>, name: &str) -> Result<(User, NewToken)> {
        let user = self.find_user(email)?;
        let t = self.issue_token(&user.id, name, None)?;
        Ok((user, t))
    }

    /// Sets a new password (generated when `None`) and ends the user's sessions.
    pub async fn reset_password(
        &self,
        email: Option<&str>,
        password: Option<String>,
    ) -> Result<(User, String)> {
        let mut user = self.find_user(email)?;
        let password = match password {
            Some(p) => {
                validate_password(&p)?;
                p
            }
            None => new_secret("").chars().take(20).collect(),
        };
        let p = password.clone();
        let hash = tokio::task::spawn_blocking(move || hash_password(&p))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        user.password_hash = Some(hash);
        self.store().write(|tx| -> Result<()> {
            tx.put_user(&user)?;
            tx.delete_sessions_of(&user.id)?;
            Ok(())
        })?;
        self.access_changed();
        Ok((user, password))
    }

    pub async fn change_password(&self, actor: &Actor, current: &str, new: &str) -> Result<()> {
        validate_password(new)?;
        if let Some(h) = &actor.user.password_hash {
            let (h, c) = (h.clone(), current.to_owned());
            let ok = tokio::task::spawn_blocking(move || verify_password(&h, &c))
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
            if !ok {
                return Err(Error::BadCredentials);
            }
        }
        let n = new.to_owned();
        let hash = tokio::task::spawn_blocking(move || hash_password(&n))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        let mut user = actor.user.clone();
        user.password_hash = Some(hash);
        self.store().write(|tx| tx.put_user(&user))?;
        self.access_changed();
        Ok(())
    }

    pub fn update_profile(&self, actor: &Actor, name: &str) -> Result<User> {
        let mut user = actor.user.clone();
        user.name = validate_display_name(name)?;
        self.store().write(|tx| tx.put_user(&user))?;
        self.access_changed();
        Ok(user)
    }

    /// Deletes expired sessions, links, invitations and tokens; returns how many.
    pub fn purge_expired(&self, now: OffsetDateTime) -> Result<usize> {
        let cutoff = crate::store::unix_ms(now);
        let expired: Vec<_> = self
            .store()
            .read(|tx| tx.expirables())?
            .into_iter()
            .filter(|(_, _, e)| *e <= cutoff)
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        self.store().write(|tx| {
            for (kind, key, _) in &expired {
                tx.delete_expired(kind, key)?;
            }
            Ok::<_, Error>(())
        })?;
        self.access_changed();
        Ok(expired.len())
    }
}

/// The classes a new organization starts with; owners edit them afterwards.
fn default_classes() -> Vec<ClassSpec> {
    const GIB: u64 = 1 << 30;
    vec![
        ClassSpec {
            name: "small".into(),
            cpu_millis: 1000,
            memory_bytes: 2 * GIB,
            disk_bytes: 10 * GIB,
            max_processes: 512,
        },
        ClassSpec {
            name: "medium".into(),
            cpu_millis: 2000,
            memory_bytes: 4 * GIB,
            disk_bytes: 30 * GIB,
            max_processes: 1024,
        },
    ]
}

/// Why a long-lived connection ends (see [`Cell::access_ends`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The caller's credential or access ended: do not reconnect.
    Access,
    /// The cell hands over to its next binary: reconnect.
    Closing,
}
