//! The one retry loop: exponential backoff with jitter, honouring `Retry-After`.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use cache_core::Error;

use crate::error::Fail;

/// The longest wait a `Retry-After` header may impose; longer waits fail instead.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// How often and how patiently temporary failures are retried.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub(crate) max_retries: u32,
    /// The delay before the first retry; doubled for each further one.
    pub(crate) base_delay: Duration,
    /// The longest computed backoff delay.
    pub(crate) max_delay: Duration,
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0-based): `base * 2^retry` capped at `max_delay`,
    /// with "equal jitter" (half fixed, half random), or `Retry-After` plus a little jitter.
    pub(crate) fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let jitter = |range: Duration| {
            let nanos = range.as_nanos() as u64;
            if nanos == 0 {
                Duration::ZERO
            } else {
                Duration::from_nanos(random_u64() % nanos)
            }
        };
        if let Some(after) = retry_after {
            return after.min(MAX_RETRY_AFTER) + jitter(self.base_delay);
        }
        let exp = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        exp / 2 + jitter(exp / 2)
    }
}

/// A random number from the standard library's per-process random hasher keys.
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// Runs `attempt` until it succeeds, fails permanently, or the retries are used up.
///
/// `attempt` gets the attempt number (0 first). A failure is retried only if its error is
/// temporary ([`Error::is_temporary`]); `on_retry` is called before each retry (for stats).
/// `attempt` returns `Err` with `retry_after: None` and a permanent error when it cannot run
/// again (for example a consumed upload body).
pub(crate) async fn retry<T, F, Fut>(
    policy: RetryPolicy,
    mut on_retry: impl FnMut(&Error),
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Fail>>,
{
    let mut n = 0;
    loop {
        match attempt(n).await {
            Ok(value) => return Ok(value),
            Err(fail) => {
                let too_long = fail
                    .retry_after
                    .is_some_and(|after| after > MAX_RETRY_AFTER);
                let temporary = fail.error.is_temporary() && !too_long;
                if !temporary || n >= policy.max_retries {
                    tracing::debug!(attempts = n + 1, error = %fail.error, "registry request gave up");
                    return Err(fail.error);
                }
                let delay = policy.delay(n, fail.retry_after);
                if !fail.retry_now {
                    // The caller restarts the operation (a consumed upload body): it may do so
                    // at once, the backoff is waited here.
                    tracing::debug!(?delay, error = %fail.error, "registry upload restarts after backoff");
                    tokio::time::sleep(delay).await;
                    return Err(fail.error);
                }
                tracing::debug!(retry = n + 1, ?delay, error = %fail.error, "retrying registry request");
                on_retry(&fail.error);
                tokio::time::sleep(delay).await;
                n += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache_core::ErrorKind;

    const POLICY: RetryPolicy = RetryPolicy {
        max_retries: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
    };

    #[test]
    fn delays_grow_and_are_capped() {
        let policy = RetryPolicy {
            max_retries: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for retry in 0..10 {
            let exp = Duration::from_millis(100 * (1 << retry)).min(Duration::from_secs(1));
            let delay = policy.delay(retry, None);
            assert!(delay >= exp / 2 && delay <= exp, "{retry}: {delay:?}");
        }
        let after = policy.delay(0, Some(Duration::from_secs(3)));
        assert!(after >= Duration::from_secs(3) && after < Duration::from_millis(3100));
    }

    #[tokio::test]
    async fn retries_temporary_failures_only() {
        let mut retries = 0;
        let res = retry(
            POLICY,
            |_| retries += 1,
            |n| async move {
                if n < 2 {
                    Err(Fail::from(
                        Error::new(ErrorKind::Unexpected, "busy").set_temporary(true),
                    ))
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(res.expect("third attempt succeeds"), 2);
        assert_eq!(retries, 2);

        let mut attempts = 0;
        let res: Result<(), _> = retry(
            POLICY,
            |_| {},
            |_| {
                attempts += 1;
                async { Err(Fail::from(Error::new(ErrorKind::Denied, "no"))) }
            },
        )
        .await;
        assert_eq!(res.expect_err("permanent").kind(), ErrorKind::Denied);
        assert_eq!(attempts, 1);

        let mut attempts = 0;
        let res: Result<(), _> = retry(
            POLICY,
            |_| {},
            |_| {
                attempts += 1;
                async {
                    Err(Fail::from(
                        Error::new(ErrorKind::Unexpected, "x").set_temporary(true),
                    ))
                }
            },
        )
        .await;
        assert!(res.is_err());
        assert_eq!(attempts, 4, "first attempt plus max_retries");
    }
}
