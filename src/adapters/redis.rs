//! Redis: the shared state between replicas. Today: the readiness probe.

use std::time::Duration;

/// Why Redis could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum RedisAdapterError {
    #[error("invalid Redis URL: {0}")]
    BadUrl(redis::RedisError),
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Answers "is Redis there?" with a fresh connection and a PING.
#[derive(Clone)]
pub struct RedisProbe {
    client: redis::Client,
}

impl RedisProbe {
    pub fn new(url: &str) -> Result<Self, RedisAdapterError> {
        let client = redis::Client::open(url).map_err(RedisAdapterError::BadUrl)?;
        Ok(Self { client })
    }

    pub async fn ping(&self) -> Result<(), RedisAdapterError> {
        let timeout = Duration::from_secs(2);
        let work = async {
            let mut conn = self.client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, RedisAdapterError>(())
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| RedisAdapterError::Timeout(timeout))?
    }
}
