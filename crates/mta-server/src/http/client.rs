//! The `mta-server queue` command: a client of the running server's admin API.

/// Fetch `GET /api/v1/queue` and print it (table or JSON).
pub async fn queue_summary(base: &str, token: Option<&str>, json: bool) -> anyhow::Result<()> {
    let _ = (base, token, json);
    anyhow::bail!("the queue admin API is not available in this build yet")
}
