//! Tokens already verified, remembered until they expire.
//!
//! An RS256 signature check costs tens of microseconds; the frontend sends
//! the same session token on every call. A hit skips the check only while it
//! is still sound: never at or past the token's `exp`, and only while the key
//! that verified it is still the one the key set holds under its `kid` (a key
//! removed or replaced by a refresh evicts its tokens).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::DecodingKey;

use crate::domain::UserId;

/// Most tokens remembered (about 150 bytes each).
const CAPACITY: usize = 10_000;

/// SHA-256 of a token: the key, so a token's text is never kept.
type Digest = [u8; 32];

struct Entry {
    user: UserId,
    exp: u64,
    kid: Option<Box<str>>,
    key: Arc<DecodingKey>,
}

/// A bounded map from token digest to the user it proved.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<Digest, Entry>>,
}

/// A token's digest, computed once per request.
pub struct CacheKey(Digest);

impl CacheKey {
    /// Digests `token`.
    pub fn of(token: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        Self(key)
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenCache {
    /// The user of a remembered token, if still sound; `held` says whether
    /// `key` is still the key set's key for `kid`.
    pub fn get(
        &self,
        key: &CacheKey,
        held: impl Fn(Option<&str>, &Arc<DecodingKey>) -> bool,
    ) -> Option<UserId> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(&key.0)?;
        if now_secs() < entry.exp && held(entry.kid.as_deref(), &entry.key) {
            return Some(entry.user.clone());
        }
        entries.remove(&key.0);
        None
    }

    /// Remembers a verified token until `exp` (unix seconds).
    pub fn insert(
        &self,
        key: CacheKey,
        user: UserId,
        exp: u64,
        kid: Option<String>,
        verified_with: Arc<DecodingKey>,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CAPACITY {
            let now = now_secs();
            entries.retain(|_, e| e.exp > now);
            // Still full of live tokens: start over rather than grow.
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            key.0,
            Entry {
                user,
                exp,
                kid: kid.map(String::into_boxed_str),
                key: verified_with,
            },
        );
    }

    /// How many tokens are remembered (tests).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<DecodingKey> {
        Arc::new(DecodingKey::from_rsa_components("AQAB", "AQAB").unwrap())
    }

    #[test]
    fn a_hit_needs_an_unexpired_token_and_its_key_still_held() {
        let cache = TokenCache::default();
        let user = UserId::parse("user_c").unwrap();
        let k = key();
        cache.insert(
            CacheKey::of("t1"),
            user.clone(),
            now_secs() + 60,
            Some("kid".into()),
            k.clone(),
        );
        cache.insert(
            CacheKey::of("t2"),
            user.clone(),
            now_secs(),
            Some("kid".into()),
            k.clone(),
        );

        assert_eq!(
            cache.get(&CacheKey::of("t1"), |_, held| Arc::ptr_eq(held, &k)),
            Some(user)
        );
        assert_eq!(cache.get(&CacheKey::of("t2"), |_, _| true), None, "expired");
        assert_eq!(
            cache.get(&CacheKey::of("t1"), |_, _| false),
            None,
            "key revoked"
        );
        assert!(cache.is_empty(), "misses evict");
    }

    #[test]
    fn the_cache_never_grows_past_its_capacity() {
        let cache = TokenCache::default();
        let user = UserId::parse("user_c").unwrap();
        let k = key();
        for i in 0..CAPACITY + 10 {
            cache.insert(
                CacheKey::of(&i.to_string()),
                user.clone(),
                now_secs() + 60,
                None,
                k.clone(),
            );
        }
        assert!(cache.len() <= CAPACITY);
    }
}
