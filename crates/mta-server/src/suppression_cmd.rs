//! Offline CSV import and export of the suppression list (`mta-server suppression import|export`): the server
//! must be stopped (the spool is opened directly, like `spool list`).
//!
//! CSV columns, with a header row: `email` (required), `reason` (`manual`, `hard_bounce`, `unsubscribe`,
//! `complaint`; default `manual`), `tenant` (empty: every tenant), `created` (ignored on import; export writes
//! it). Import checks every row first and stores nothing when one is bad (the error names its line); then it
//! stores the rows in commits of [`BATCH`] entries, each durable before the next.

use std::io::{Read, Write};

use anyhow::Context;
use mta_core::suppression::{Entry, Reason, Suppressions};
use mta_spool::{Spool, SpoolConfig};

use crate::config::Config;

/// Entries per spool commit on import.
const BATCH: usize = 10_000;
/// Entries per page read on export.
const PAGE: usize = 10_000;

fn open(config: &Config) -> anyhow::Result<Spool> {
    let mut sc = SpoolConfig::new(config.spool.path.clone(), &config.server.node_id);
    sc.sled_cache_bytes = config.spool.cache_bytes;
    Spool::open(sc).map_err(|e| anyhow::anyhow!("{e} (is the server stopped?)"))
}

/// Read every row of `input` into entries; the first bad row is an error naming its line.
fn read_entries(input: impl Read, default_tenant: Option<&str>) -> anyhow::Result<Vec<Entry>> {
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(true).from_reader(input);
    let headers = reader.headers().context("reading the CSV header")?.clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let Some(email_col) = col("email") else {
        anyhow::bail!("the CSV header has no `email` column (columns: email,reason,tenant)");
    };
    let (reason_col, tenant_col) = (col("reason"), col("tenant"));
    let mut out = Vec::new();
    for (n, row) in reader.records().enumerate() {
        let line = n + 2;
        let row = row.with_context(|| format!("CSV line {line}"))?;
        let email = row.get(email_col).unwrap_or("");
        if mta_core::reception::check_address(email).is_err() || !email.contains('@') {
            anyhow::bail!("CSV line {line}: {email:?} is not an address");
        }
        let reason = match reason_col.and_then(|c| row.get(c)).filter(|r| !r.is_empty()) {
            None => Reason::Manual,
            Some(r) => Reason::parse(r).with_context(|| {
                format!("CSV line {line}: reason {r:?} is not manual, hard_bounce, unsubscribe or complaint")
            })?,
        };
        let tenant = match tenant_col.and_then(|c| row.get(c)) {
            Some(t) if !t.is_empty() => Some(t.to_string()),
            Some(_) => None,
            None => default_tenant.map(str::to_string),
        };
        if tenant.as_ref().is_some_and(|t| t.len() > 128 || t.contains('\0')) {
            anyhow::bail!("CSV line {line}: tenant too long (at most 128 characters)");
        }
        out.push(Entry::new(email, reason, tenant));
    }
    Ok(out)
}

/// `suppression import FILE|- [--tenant T]`: add every row (existing entries are replaced).
pub fn import(config: &Config, file: &str, tenant: Option<&str>) -> anyhow::Result<()> {
    let entries = if file == "-" {
        read_entries(std::io::stdin().lock(), tenant)?
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("cannot open {file}"))?;
        read_entries(std::io::BufReader::new(f), tenant)?
    };
    let spool = open(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let stored = runtime.block_on(async {
        let list = Suppressions::empty(spool.clone());
        let mut stored = 0usize;
        for batch in entries.chunks(BATCH) {
            stored += list.put_many(batch).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        spool.close().await;
        Ok::<_, anyhow::Error>(stored)
    })?;
    eprintln!("imported {stored} suppression entries");
    Ok(())
}

/// `suppression export [--tenant T]`: every entry (or one tenant's) as CSV on stdout.
pub fn export(config: &Config, tenant: Option<&str>) -> anyhow::Result<()> {
    let spool = open(config)?;
    let list = Suppressions::empty(spool);
    let stdout = std::io::stdout();
    let mut out = csv::Writer::from_writer(std::io::BufWriter::new(stdout.lock()));
    out.write_record(["email", "reason", "tenant", "created"])?;
    let mut cursor: Option<String> = None;
    loop {
        let (page, next) = list.list_blocking(tenant, cursor.as_deref(), PAGE).map_err(|e| anyhow::anyhow!("{e}"))?;
        for e in page {
            out.write_record([e.email.as_str(), e.reason.as_str(), e.tenant.as_deref().unwrap_or(""), &e.created])?;
        }
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    out.flush()?;
    std::io::stdout().flush()?;
    Ok(())
}
