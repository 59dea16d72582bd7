//! A read-through cache of product representations, for the public single-product read: in
//! process memory (moka), or in Redis when configured so every instance shares one copy.
//!
//! Every write that changes a product invalidates it after commit, before the write's
//! response is sent, so nobody reads an older representation after a write has returned.
//! In memory, that holds for the instance that wrote; other instances converge within the TTL.
//! In Redis it holds for every instance.
//!
//! A load that overlaps a write must not cache what it read before the write committed. In
//! memory, every invalidation bumps an epoch; a load caches its result only if the epoch did
//! not move while it ran, and takes the entry back out if the epoch moved after it inserted.
//! In Redis, each product has a generation counter that invalidation increments (and the entry
//! is deleted, in one transaction); a load notes the generation when it misses, and a script
//! stores its result only if the generation is still the same.
//!
//! Reads that reach Redis at the same time share one `MGET`: a task of the cache sends what
//! waits whenever the previous lookup has come back, so under load Redis answers a batch per
//! round trip instead of a command per read (its networking, not the lookup, is what a command
//! costs it).
//!
//! Redis failing never fails a read: the product is loaded from the database and not cached.
//! An invalidation that cannot reach Redis is remembered and retried before this instance's
//! next cache call; until then (or until the TTL), other instances may serve the old copy.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use orderly_kit::conditional::{body_of, etag_of};
use orderly_kit::redis::SharedRedis;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::store::{self, Product};
use crate::db::{Database, DbError};

/// A product as the API sends it, with its validators. Only the bytes are kept: a parsed
/// JSON value would take several times the memory.
pub struct CachedProduct {
    pub body: Bytes,
    pub etag: String,
    pub updated_at: DateTime<Utc>,
}

pub enum ProductCache {
    /// `None` when caching is turned off (TTL of zero).
    Local {
        entries: Option<moka::sync::Cache<Uuid, Arc<CachedProduct>, foldhash::fast::RandomState>>,
        epoch: AtomicU64,
    },
    Shared(SharedProducts),
}

/// How long generation counters outlive their last bump: far longer than any load.
const GENERATION_TTL: Duration = Duration::from_secs(86_400);

pub struct SharedProducts {
    redis: Arc<SharedRedis>,
    /// Lookups waiting for the next `MGET` ([`look_up_in_batches`]).
    lookups: mpsc::UnboundedSender<Lookup>,
    ttl: Duration,
    /// Invalidations that could not reach Redis, retried before the next cache call.
    pending: Mutex<HashSet<Uuid>>,
}

impl ProductCache {
    /// In memory; a TTL of zero turns caching off.
    pub fn local(ttl: Duration) -> Self {
        let entries = (!ttl.is_zero()).then(|| {
            let builder = moka::sync::Cache::builder().max_capacity(100_000).time_to_live(ttl);
            builder.build_with_hasher(foldhash::fast::RandomState::default())
        });
        Self::Local { entries, epoch: AtomicU64::new(0) }
    }

    /// In Redis, shared by every instance; starts the task that sends lookups to Redis (it ends
    /// with the cache).
    pub fn shared(redis: Arc<SharedRedis>, ttl: Duration) -> Self {
        let (lookups, waiting) = mpsc::unbounded_channel();
        tokio::spawn(look_up_in_batches(Arc::clone(&redis), waiting));
        Self::Shared(SharedProducts { redis, lookups, ttl, pending: Mutex::new(HashSet::new()) })
    }

    /// The product's current representation, from the cache or from the database as
    /// [`Database::current`] sees it (a replica could put an old copy in a shared cache).
    pub async fn get(
        &self,
        db: &Database,
        id: Uuid,
        render: fn(&Product) -> Value,
    ) -> Result<Option<Arc<CachedProduct>>, DbError> {
        match self {
            Self::Local { entries, epoch } => {
                if let Some(hit) = entries.as_ref().and_then(|entries| entries.get(&id)) {
                    count("hit");
                    return Ok(Some(hit));
                }
                count("miss");
                let seen = epoch.load(Ordering::Acquire);
                let Some(entry) = load(db, id, render).await? else {
                    return Ok(None);
                };
                if let Some(entries) = entries
                    && epoch.load(Ordering::Acquire) == seen
                {
                    entries.insert(id, Arc::clone(&entry));
                    if epoch.load(Ordering::Acquire) != seen {
                        entries.invalidate(&id);
                    }
                }
                Ok(Some(entry))
            }
            Self::Shared(shared) => shared.get(db, id, render).await,
        }
    }

    /// Forgets the given products; call after the write that changed them committed, before
    /// answering it.
    pub async fn invalidate(&self, ids: impl IntoIterator<Item = Uuid>) {
        match self {
            Self::Local { entries, epoch } => {
                epoch.fetch_add(1, Ordering::AcqRel);
                if let Some(entries) = entries {
                    for id in ids {
                        entries.invalidate(&id);
                    }
                }
            }
            Self::Shared(shared) => shared.invalidate(ids.into_iter().collect()).await,
        }
    }
}

/// A product's entry and generation keys, and where their values go.
struct Lookup {
    keys: [String; 2],
    reply: oneshot::Sender<Result<Found, ()>>,
}

/// A product's cached entry and its generation, as Redis holds them (either may be absent).
type Found = (Option<Vec<u8>>, Option<u64>);

/// At most this many lookups share one `MGET`.
const MAX_BATCH: usize = 256;

/// Sends the lookups waiting, all in one `MGET`, each time the previous one has come back.
async fn look_up_in_batches(redis: Arc<SharedRedis>, mut waiting: mpsc::UnboundedReceiver<Lookup>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let keys: Vec<&str> = batch.iter().flat_map(|lookup| lookup.keys.iter().map(String::as_str)).collect();
        let values: Result<Vec<Option<Vec<u8>>>, _> = redis
            .call("cache_get", async |connection| redis::cmd("MGET").arg(&keys).query_async(connection).await)
            .await;
        match values {
            Ok(values) if values.len() == keys.len() => {
                let mut values = values.into_iter();
                for lookup in batch.drain(..) {
                    let entry = values.next().flatten();
                    let generation = values.next().flatten();
                    let generation = generation.and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok());
                    let _ = lookup.reply.send(Ok((entry, generation)));
                }
            }
            // Redis is unavailable (or answered nonsense): every read goes to the database.
            _ => batch.drain(..).for_each(|lookup| drop(lookup.reply.send(Err(())))),
        }
    }
}

/// Stores an entry only if its product's generation is still the one its load started at.
static FILL: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if (tonumber(redis.call('GET', KEYS[2])) or 0) == tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 0
",
    )
});

impl SharedProducts {
    fn keys(&self, id: Uuid) -> (String, String) {
        (self.redis.key(format_args!("product:{id}")), self.redis.key(format_args!("product-generation:{id}")))
    }

    async fn get(
        &self,
        db: &Database,
        id: Uuid,
        render: fn(&Product) -> Value,
    ) -> Result<Option<Arc<CachedProduct>>, DbError> {
        self.retry_pending().await;
        let (entry_key, generation_key) = self.keys(id);
        let (reply, answer) = oneshot::channel();
        let lookup = Lookup { keys: [entry_key.clone(), generation_key.clone()], reply };
        let cached = match self.lookups.send(lookup) {
            Ok(()) => answer.await.unwrap_or(Err(())),
            Err(_) => Err(()),
        };
        let generation = match cached {
            Ok((bytes, generation)) => {
                if let Some(hit) = bytes.as_deref().and_then(decode) {
                    count("hit");
                    return Ok(Some(Arc::new(hit)));
                }
                Some(generation.unwrap_or(0))
            }
            // Redis is unavailable: serve from the database, cache nothing.
            Err(_) => None,
        };
        count("miss");
        let Some(entry) = load(db, id, render).await? else {
            return Ok(None);
        };
        if let Some(generation) = generation {
            let encoded = encode(&entry);
            let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            // A failed fill only costs a later miss.
            let _ = self
                .redis
                .call("cache_fill", async |connection| {
                    FILL.key(&entry_key)
                        .key(&generation_key)
                        .arg(generation)
                        .arg(encoded)
                        .arg(ttl)
                        .invoke_async::<()>(connection)
                        .await
                })
                .await;
        }
        Ok(Some(entry))
    }

    async fn invalidate(&self, ids: Vec<Uuid>) {
        if let Err(_unavailable) = self.bump(&ids).await {
            self.lock_pending().extend(ids);
        }
    }

    /// Increments each product's generation and deletes its entry, in one transaction.
    async fn bump(&self, ids: &[Uuid]) -> Result<(), orderly_kit::redis::Unavailable> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut transaction = redis::pipe();
        transaction.atomic();
        for id in ids {
            let (entry_key, generation_key) = self.keys(*id);
            transaction.incr(&generation_key, 1).ignore();
            transaction.pexpire(&generation_key, GENERATION_TTL.as_millis() as i64).ignore();
            transaction.del(&entry_key).ignore();
        }
        self.redis.call("cache_invalidate", async |connection| transaction.query_async::<()>(connection).await).await
    }

    async fn retry_pending(&self) {
        let pending: Vec<Uuid> = {
            let mut pending = self.lock_pending();
            if pending.is_empty() {
                return;
            }
            pending.drain().collect()
        };
        self.invalidate(pending).await;
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        // A set of ids cannot be left torn by a panic.
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn count(result: &'static str) {
    metrics::counter!("orderly_cache_requests_total", "cache" => "products", "result" => result).increment(1);
}

/// Reads the product and renders its entry; on SQLite the rendering runs on the database
/// thread, so the row crosses threads once, already serialized.
async fn load(db: &Database, id: Uuid, render: fn(&Product) -> Value) -> Result<Option<Arc<CachedProduct>>, DbError> {
    db.current()
        .run(async move |conn| {
            let Some(product) = store::find_product(conn, id).await? else {
                return Ok(None);
            };
            let body = body_of(&render(&product));
            Ok(Some(Arc::new(CachedProduct { etag: etag_of(&body), body, updated_at: product.updated_at })))
        })
        .await
}

/// `<etag>\n<updated_at µs>\n<body>`.
fn encode(entry: &CachedProduct) -> Vec<u8> {
    let mut encoded = format!("{}\n{}\n", entry.etag, entry.updated_at.timestamp_micros()).into_bytes();
    encoded.extend_from_slice(&entry.body);
    encoded
}

/// `None` for anything [`encode`] did not write; the caller treats it as a miss.
fn decode(encoded: &[u8]) -> Option<CachedProduct> {
    let mut parts = encoded.splitn(3, |byte| *byte == b'\n');
    let etag = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let micros: i64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let body = Bytes::copy_from_slice(parts.next()?);
    Some(CachedProduct { body, etag, updated_at: DateTime::from_timestamp_micros(micros)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_encoding_and_garbage_is_a_miss() {
        let entry = CachedProduct {
            body: Bytes::from_static(b"{\"name\":\"two\nlines\"}"),
            etag: "\"abc\"".into(),
            updated_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
        };
        let decoded = decode(&encode(&entry)).unwrap();
        assert_eq!((decoded.body, decoded.etag, decoded.updated_at), (entry.body, entry.etag, entry.updated_at));
        assert!(decode(b"no newline").is_none());
        assert!(decode(b"\"e\"\nnot-a-number\n{}").is_none());
    }
}
