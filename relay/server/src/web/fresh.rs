//! A cache for live views that never makes a reader wait for a refresh:
//! a value older than `fresh` is still served while one background task
//! reloads it (stale-while-revalidate); a value older than `max_age` is gone
//! and the next reader loads it (concurrent misses share one load).

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Entry<V> {
    value: V,
    loaded: Instant,
    refreshing: AtomicBool,
}

/// See the module docs.
pub struct Revalidating<K, V> {
    cache: moka::future::Cache<K, Arc<Entry<V>>>,
    fresh: Duration,
    /// Bumped by [`Revalidating::invalidate_all`]: a refresh that started
    /// before it must not put its (older) value back.
    generation: Arc<AtomicU64>,
}

impl<K, V> Revalidating<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Values are fresh for `fresh` and dropped after `max_age`.
    pub fn new(fresh: Duration, max_age: Duration, capacity: u64) -> Self {
        Revalidating {
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(max_age)
                .build(),
            fresh,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The value for `key`, loading it with `load` when absent and
    /// refreshing it in the background when stale.
    pub async fn get<F, Fut, E>(&self, key: K, load: F) -> Result<V, Arc<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let entry = self
            .cache
            .try_get_with(key.clone(), {
                let fut = load();
                async move {
                    fut.await.map(|value| {
                        Arc::new(Entry {
                            value,
                            loaded: Instant::now(),
                            refreshing: AtomicBool::new(false),
                        })
                    })
                }
            })
            .await?;
        if entry.loaded.elapsed() > self.fresh && !entry.refreshing.swap(true, Ordering::AcqRel) {
            let cache = self.cache.clone();
            let generation = self.generation.clone();
            let started = generation.load(Ordering::Acquire);
            let fut = load();
            tokio::spawn(async move {
                match fut.await {
                    Ok(_) if generation.load(Ordering::Acquire) != started => {}
                    Ok(value) => {
                        let fresh = Arc::new(Entry {
                            value,
                            loaded: Instant::now(),
                            refreshing: AtomicBool::new(false),
                        });
                        cache.insert(key, fresh).await;
                    }
                    // Keep serving the old value; the next reader retries.
                    Err(_) => entry_retry(&cache, &key).await,
                }
            });
        }
        Ok(entry.value.clone())
    }

    /// Drops everything (after this process changed what the values show).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate_all();
    }
}

async fn entry_retry<K, V>(cache: &moka::future::Cache<K, Arc<Entry<V>>>, key: &K)
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    if let Some(e) = cache.get(key).await {
        e.refreshing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn serves_stale_while_refreshing() {
        let c: Revalidating<u8, u32> =
            Revalidating::new(Duration::from_millis(50), Duration::from_secs(10), 10);
        let loads = Arc::new(AtomicU32::new(0));
        let load = || {
            let loads = loads.clone();
            async move { Ok::<_, ()>(loads.fetch_add(1, Ordering::SeqCst) + 1) }
        };
        assert_eq!(c.get(1, load).await.unwrap(), 1);
        assert_eq!(c.get(1, load).await.unwrap(), 1, "fresh: no reload");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            c.get(1, load).await.unwrap(),
            1,
            "stale value served at once"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(c.get(1, load).await.unwrap(), 2, "then the refreshed one");
        c.invalidate_all();
        assert_eq!(c.get(1, load).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn a_refresh_started_before_invalidation_is_dropped() {
        let c: Revalidating<u8, u32> =
            Revalidating::new(Duration::from_millis(10), Duration::from_secs(10), 10);
        // The "database": a load reads it when it starts, and may be slow to return.
        let truth = Arc::new(AtomicU32::new(1));
        let slow = Arc::new(AtomicBool::new(false));
        let load = || {
            let v = truth.load(Ordering::SeqCst);
            let slow = slow.load(Ordering::SeqCst);
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok::<_, ()>(v)
            }
        };
        assert_eq!(c.get(1, load).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        slow.store(true, Ordering::SeqCst);
        assert_eq!(
            c.get(1, load).await.unwrap(),
            1,
            "stale served; a slow refresh read the old value"
        );
        slow.store(false, Ordering::SeqCst);
        truth.store(2, Ordering::SeqCst);
        c.invalidate_all();
        assert_eq!(c.get(1, load).await.unwrap(), 2, "loaded after the change");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            c.get(1, load).await.unwrap(),
            2,
            "the refresh from before the change did not come back"
        );
    }
}
