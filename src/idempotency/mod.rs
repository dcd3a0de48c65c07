//! `Idempotency-Key` on creates (contract §7): a create a client retries
//! with its key happens once.
//!
//! A key belongs to the user who sent it and is remembered from its first
//! use for `IDEMPOTENCY_TTL_SECS`. The store behind [`IdempotencyStore`] is
//! in process ([`MemoryStore`], bounded) for one instance, or in Redis
//! ([`shared::SharedStore`]) so that a retry may reach any instance.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::domain::UserId;

pub mod shared;

/// `Idempotency-Key`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// `Idempotent-Replayed`, set on a replayed answer.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// A client's idempotency key: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a header value.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let visible = (1..=255).contains(&raw.len()) && raw.iter().all(u8::is_ascii_graphic);
        // Visible ASCII is UTF-8.
        visible.then(|| Self(String::from_utf8_lossy(raw).into_owned()))
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The SHA-256 of a request body: what "the same request" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Digests `body`.
    pub fn of(body: &[u8]) -> Self {
        let mut hasher = Hasher::new();
        hasher.update(body);
        hasher.finish()
    }

    /// Lowercase hex, for stores that keep text.
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads back [`Fingerprint::to_hex`].
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(bytes))
    }
}

/// A body's fingerprint, computed as its bytes pass.
pub struct Hasher(ring::digest::Context);

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

impl Hasher {
    /// Nothing digested yet.
    pub fn new() -> Self {
        Self(ring::digest::Context::new(&ring::digest::SHA256))
    }

    /// Digests more of the body.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The fingerprint of everything digested.
    pub fn finish(self) -> Fingerprint {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.0.finish().as_ref());
        Fingerprint(bytes)
    }
}

/// A create attempt whose record may or may not exist: the object it
/// uploaded and the public URL it sent to the BDD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undecided {
    /// The object path in the bucket.
    pub path: String,
    /// The public URL the record would carry.
    pub url: String,
}

/// What the store says about a key when a request claims it. The request's
/// body streams through the create, so its fingerprint is known only once
/// the body has passed: the caller compares it with what a claim returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use (or the key was free again): the caller now holds it.
    Fresh,
    /// A request with this key is running now.
    InFlight,
    /// A request with `fingerprint` finished with `201`: this is its body.
    Done {
        /// The fingerprint of that request.
        fingerprint: Fingerprint,
        /// Its `201` body.
        body: Bytes,
    },
    /// A request with `fingerprint` left its outcome unknown: the caller
    /// now holds the key; a retry with the same body settles `attempt`
    /// first, another body puts it back ([`IdempotencyStore::leave_undecided`]).
    Settle {
        /// The fingerprint of that request.
        fingerprint: Fingerprint,
        /// What it left undecided.
        attempt: Undecided,
    },
}

/// The key store cannot be reached: a keyed create must not run (it could
/// duplicate an image).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("idempotency store unavailable: {0}")]
pub struct StoreDown(pub String);

/// Where keys are remembered.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` of `user`; while held, other requests with it get
    /// [`Claim::InFlight`] until `lease` passes.
    async fn claim(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        lease: Duration,
    ) -> Result<Claim, StoreDown>;

    /// The held key's request (`fingerprint`) answered `201` with `body`: remember it.
    async fn complete(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        body: Bytes,
    ) -> Result<(), StoreDown>;

    /// The held key's request failed with a known outcome: the key is free again.
    async fn release(&self, user: &UserId, key: &IdempotencyKey) -> Result<(), StoreDown>;

    /// The held key's request (`fingerprint`) left `attempt` undecided: a
    /// retry with the same body settles it first.
    async fn leave_undecided(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        attempt: Undecided,
    ) -> Result<(), StoreDown>;

    /// Whether the store answers (readiness); an in-process store always does.
    async fn ping(&self) -> Result<(), StoreDown>;
}

/// The state of a remembered key.
#[derive(Debug, Clone)]
enum State {
    /// Held by a running request until the lease ends; an undecided
    /// attempt being settled is kept, to put back if the body differs.
    Running {
        until: Instant,
        settling: Option<(Fingerprint, Undecided)>,
    },
    Done(Fingerprint, Bytes),
    Undecided(Fingerprint, Undecided),
}

#[derive(Debug, Clone)]
struct Entry {
    state: State,
    expires: Instant,
}

impl Entry {
    fn weight(&self) -> usize {
        match &self.state {
            State::Done(_, body) => body.len() + 160,
            State::Undecided(_, u)
            | State::Running {
                settling: Some((_, u)),
                ..
            } => u.path.len() + u.url.len() + 160,
            State::Running { .. } => 160,
        }
    }
}

/// Keys remembered in this process, bounded: at most `max_keys` keys and
/// `max_bytes` of remembered answers. When full, the entries nearest their
/// expiry are forgotten first (their retries would run afresh).
pub struct MemoryStore {
    ttl: Duration,
    max_keys: usize,
    max_bytes: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<(UserId, IdempotencyKey), Entry>,
    bytes: usize,
}

impl Entries {
    fn insert(&mut self, at: (UserId, IdempotencyKey), entry: Entry) {
        self.bytes += entry.weight();
        if let Some(old) = self.map.insert(at, entry) {
            self.bytes -= old.weight();
        }
    }

    fn remove(&mut self, at: &(UserId, IdempotencyKey)) {
        if let Some(old) = self.map.remove(at) {
            self.bytes -= old.weight();
        }
    }
}

/// Keys remembered at most, by default.
pub const MEMORY_MAX_KEYS: usize = 100_000;
/// Bytes of remembered answers at most, by default.
pub const MEMORY_MAX_BYTES: usize = 64 << 20;

impl MemoryStore {
    /// A store remembering keys for `ttl`, within the default bounds.
    pub fn new(ttl: Duration) -> Self {
        Self::bounded(ttl, MEMORY_MAX_KEYS, MEMORY_MAX_BYTES)
    }

    /// A store with explicit bounds.
    pub fn bounded(ttl: Duration, max_keys: usize, max_bytes: usize) -> Self {
        Self {
            ttl,
            max_keys,
            max_bytes,
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for one more entry: expired ones go, then the oldest.
    fn make_room(&self, entries: &mut Entries, now: Instant) {
        if entries.map.len() < self.max_keys && entries.bytes < self.max_bytes {
            return;
        }
        let expired: Vec<_> = entries
            .map
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            entries.remove(&key);
        }
        while entries.map.len() >= self.max_keys || entries.bytes >= self.max_bytes {
            let Some(oldest) = entries
                .map
                .iter()
                .filter(|(_, e)| !matches!(e.state, State::Running { .. }))
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            tracing::warn!("idempotency store full: forgetting the oldest key");
            entries.remove(&oldest);
        }
    }

    fn set(&self, user: &UserId, key: &IdempotencyKey, state: State) {
        let mut entries = self.lock();
        let at = (user.clone(), key.clone());
        if let Some(entry) = entries.map.get(&at).cloned() {
            entries.insert(at, Entry { state, ..entry });
        }
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        lease: Duration,
    ) -> Result<Claim, StoreDown> {
        let now = Instant::now();
        let mut entries = self.lock();
        let at = (user.clone(), key.clone());
        let running = |settling| State::Running {
            until: now + lease,
            settling,
        };
        let current = entries.map.get(&at).filter(|e| e.expires > now).cloned();
        let Some(entry) = current else {
            entries.remove(&at);
            self.make_room(&mut entries, now);
            if entries.map.len() >= self.max_keys {
                return Err(StoreDown(
                    "in-process key store full of running requests".into(),
                ));
            }
            let fresh = Entry {
                state: running(None),
                expires: now + self.ttl,
            };
            entries.insert(at, fresh);
            return Ok(Claim::Fresh);
        };
        let (claim, state) = match entry.state {
            State::Done(fingerprint, body) => return Ok(Claim::Done { fingerprint, body }),
            State::Running { until, .. } if until > now => return Ok(Claim::InFlight),
            // A lease that ended without an outcome: its request died.
            State::Running {
                settling: Some((fingerprint, attempt)),
                ..
            }
            | State::Undecided(fingerprint, attempt) => (
                Claim::Settle {
                    fingerprint,
                    attempt: attempt.clone(),
                },
                running(Some((fingerprint, attempt))),
            ),
            State::Running { settling: None, .. } => (Claim::Fresh, running(None)),
        };
        entries.insert(
            at,
            Entry {
                state,
                expires: entry.expires,
            },
        );
        Ok(claim)
    }

    async fn complete(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        body: Bytes,
    ) -> Result<(), StoreDown> {
        self.set(user, key, State::Done(fingerprint, body));
        Ok(())
    }

    async fn release(&self, user: &UserId, key: &IdempotencyKey) -> Result<(), StoreDown> {
        self.lock().remove(&(user.clone(), key.clone()));
        Ok(())
    }

    async fn leave_undecided(
        &self,
        user: &UserId,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        attempt: Undecided,
    ) -> Result<(), StoreDown> {
        self.set(user, key, State::Undecided(fingerprint, attempt));
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreDown> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn key(text: &str) -> IdempotencyKey {
        IdempotencyKey::parse(text.as_bytes()).unwrap()
    }

    const LEASE: Duration = Duration::from_secs(60);

    #[test]
    fn fingerprints_are_sha_256_and_survive_hex() {
        let fingerprint = Fingerprint::of(b"abc");
        assert_eq!(
            fingerprint.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            Fingerprint::from_hex(&fingerprint.to_hex()),
            Some(fingerprint)
        );
        let mut hasher = Hasher::new();
        hasher.update(b"a");
        hasher.update(b"bc");
        assert_eq!(hasher.finish(), fingerprint);
        assert_eq!(Fingerprint::from_hex("zz"), None);
    }

    #[test]
    fn keys_are_1_to_255_visible_ascii_characters() {
        assert!(IdempotencyKey::parse(b"a").is_some());
        assert!(IdempotencyKey::parse("k".repeat(255).as_bytes()).is_some());
        for bad in [&b""[..], &[b'k'; 256][..], b"a b", b"caf\xc3\xa9", b"tab\t"] {
            assert!(IdempotencyKey::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_key_runs_once_and_keeps_its_201_with_its_fingerprint() {
        let store = MemoryStore::new(Duration::from_secs(60));
        let (a, k) = (user("user_a"), key("k1"));
        let body = Fingerprint::of(b"body");
        assert_eq!(store.claim(&a, &k, LEASE).await, Ok(Claim::Fresh));
        assert_eq!(store.claim(&a, &k, LEASE).await, Ok(Claim::InFlight));
        store
            .complete(&a, &k, body, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert_eq!(
            store.claim(&a, &k, LEASE).await,
            Ok(Claim::Done {
                fingerprint: body,
                body: Bytes::from_static(b"{}")
            })
        );
        assert_eq!(
            store.claim(&user("user_b"), &k, LEASE).await,
            Ok(Claim::Fresh),
            "keys are per user"
        );
    }

    #[tokio::test]
    async fn a_failed_attempt_frees_the_key_and_an_undecided_one_is_settled_first() {
        let store = MemoryStore::new(Duration::from_secs(60));
        let (a, k, body) = (user("user_a"), key("k1"), Fingerprint::of(b"body"));
        store.claim(&a, &k, LEASE).await.unwrap();
        store.release(&a, &k).await.unwrap();
        assert_eq!(store.claim(&a, &k, LEASE).await, Ok(Claim::Fresh));
        let attempt = Undecided {
            path: "user_a/1_generated_x.png".into(),
            url: "http://s/user_a/1_generated_x.png".into(),
        };
        store
            .leave_undecided(&a, &k, body, attempt.clone())
            .await
            .unwrap();
        let settle = Claim::Settle {
            fingerprint: body,
            attempt: attempt.clone(),
        };
        assert_eq!(store.claim(&a, &k, LEASE).await, Ok(settle.clone()));
        assert_eq!(store.claim(&a, &k, LEASE).await, Ok(Claim::InFlight));
        // Another body: the attempt is put back for a retry of the first.
        store.leave_undecided(&a, &k, body, attempt).await.unwrap();
        assert_eq!(store.claim(&a, &k, LEASE).await, Ok(settle));
    }

    #[tokio::test]
    async fn keys_expire_and_a_dead_lease_runs_afresh() {
        let store = MemoryStore::new(Duration::from_millis(30));
        let (a, k, body) = (user("user_a"), key("k1"), Fingerprint::of(b"body"));
        store
            .claim(&a, &k, Duration::from_millis(10))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert_eq!(store.claim(&a, &k, LEASE).await, Ok(Claim::Fresh));
        store.complete(&a, &k, body, Bytes::new()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(store.claim(&a, &k, LEASE).await, Ok(Claim::Fresh));
    }

    #[tokio::test]
    async fn the_store_stays_within_its_bounds() {
        let store = MemoryStore::bounded(Duration::from_secs(60), 10, 1 << 20);
        let body = Fingerprint::of(b"body");
        for i in 0..50 {
            let (a, k) = (user("user_a"), key(&format!("k{i}")));
            assert_eq!(store.claim(&a, &k, LEASE).await, Ok(Claim::Fresh));
            store
                .complete(&a, &k, body, Bytes::from_static(b"{}"))
                .await
                .unwrap();
        }
        assert!(store.lock().map.len() <= 10);
    }
}
