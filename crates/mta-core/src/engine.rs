//! The engine an embedder (and our server) drives: open the spool, inject messages durably, emit events.
//!
//! Injection is the same for every entry point (SMTP, HTTP, library): validate the envelope, prepend our
//! `Received:` header, put the message through the spool's group commit, and only then report success.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use mta_spool::{MessageRecord, Op, Priority, QueueId, Source, Spool, SpoolConfig};

use crate::auth::{strip_spoofed_results, AuthPolicy, KeyConfig, Preflight, Signer, Verifier};
use crate::backpressure::{Backpressure, BackpressureConfig};
use crate::delivery::{Delivery, DeliveryConfig};
use crate::dns::{DnsConfig, Resolver};
use crate::error::{EngineError, InjectError};
use crate::events::{event_id, now_rfc3339, Event, EventLog, EventType};
use crate::export::{ExportConfig, Exporters};
use crate::history::{History, HistoryConfig, HistoryRecord};
use crate::incoming::{BodyBudget, Incoming};
use crate::reception::{check_address, received_header, Protocol};
use crate::suppression::Suppressions;

/// How to build an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Our host name: `Received:` by-name and EHLO name.
    pub hostname: String,
    /// Node id in every queue id.
    pub node_id: String,
    /// Spool directory.
    pub spool_path: PathBuf,
    /// sled page cache size.
    pub spool_cache_bytes: u64,
    /// Event log file; `None` keeps events in process (subscribers only).
    pub event_log: Option<PathBuf>,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Largest message accepted (after our headers are added the limit is not re-checked).
    pub max_message_size: u64,
    /// The resolver pool's settings.
    pub dns: DnsConfig,
    /// Delivery settings (`delivery.enabled = false` only spools).
    pub delivery: DeliveryConfig,
    /// DKIM signing keys (`[[dkim.key]]`); messages with `sign = true` are signed at reception.
    pub dkim_keys: Vec<KeyConfig>,
    /// Also sign every signed message with this domain's key (a fixed signing domain).
    pub dkim_fixed_domain: Option<String>,
    /// A message being received stays in memory up to this size; beyond it its body goes to a staged
    /// spool file ([`crate::incoming`]).
    pub memory_per_message: usize,
    /// Message bytes held in memory at once by every reception together (and whole messages read back for
    /// verification or signing); beyond it messages are staged on disk from the start.
    pub body_memory_budget: u64,
    /// Inbound verification (SPF/DKIM/DMARC/ARC) of mail from outside; all off by default.
    pub auth: AuthPolicy,
    /// The node's health monitor and load shedding; `None` (the default) is always healthy.
    pub backpressure: Option<BackpressureConfig>,
    /// Sender pre-flight (our DKIM keys and SPF as published) runs when keys are configured; with this set,
    /// delivery holds messages whose signing domain does not check out instead of sending them.
    pub hold_on_preflight_mismatch: bool,
    /// Addresses we send from, for the SPF pre-flight (besides the resolver's view of our host).
    pub source_addresses: Vec<IpAddr>,
    /// Event export (`[[webhook]]`) and the outbox's bound; none by default.
    pub export: ExportConfig,
    /// How long and how much of finished messages' outcomes is kept (`[history]`).
    pub history: HistoryConfig,
}

/// Default [`EngineConfig::memory_per_message`]: 256 KiB.
pub const DEFAULT_MEMORY_PER_MESSAGE: usize = 256 << 10;
/// Default [`EngineConfig::body_memory_budget`]: 256 MiB.
pub const DEFAULT_BODY_MEMORY_BUDGET: u64 = 256 << 20;

impl EngineConfig {
    /// Defaults for a spool at `spool_path`.
    pub fn new(spool_path: impl Into<PathBuf>) -> Self {
        EngineConfig {
            hostname: "localhost".into(),
            node_id: "node".into(),
            spool_path: spool_path.into(),
            spool_cache_bytes: mta_spool::DEFAULT_SLED_CACHE_BYTES,
            event_log: None,
            max_recipients: mta_smtp::server::config::DEFAULT_MAX_RECIPIENTS,
            max_message_size: mta_smtp::server::config::DEFAULT_MAX_MESSAGE_SIZE,
            dns: DnsConfig::default(),
            delivery: DeliveryConfig::default(),
            dkim_keys: Vec::new(),
            dkim_fixed_domain: None,
            memory_per_message: DEFAULT_MEMORY_PER_MESSAGE,
            body_memory_budget: DEFAULT_BODY_MEMORY_BUDGET,
            auth: AuthPolicy::default(),
            backpressure: None,
            hold_on_preflight_mismatch: false,
            source_addresses: Vec::new(),
            export: ExportConfig::default(),
            history: HistoryConfig::default(),
        }
    }
}

/// One message handed to the engine.
#[derive(Debug, Clone)]
pub struct Injection {
    /// Envelope sender; `""` is the null sender.
    pub sender: String,
    /// Envelope recipients.
    pub recipients: Vec<String>,
    /// RFC 5322 message bytes (CRLF line ends).
    pub content: Bytes,
    /// Tenant for per-tenant queues.
    pub tenant: Option<String>,
    /// Egress pool.
    pub pool: Option<String>,
    /// Dispatch priority.
    pub priority: Priority,
    /// Entry protocol for the `Received:` header.
    pub protocol: Protocol,
    /// Client address, if any.
    pub peer: Option<IpAddr>,
    /// Client's EHLO name, if any.
    pub helo: Option<String>,
    /// Authenticated user or API key label.
    pub auth_user: Option<String>,
    /// Our `Authentication-Results:` header (with CRLF) from inbound verification, prepended above `Received:`.
    pub auth_results: Option<String>,
    /// DKIM-sign with our keys (only for mail from trusted clients: authenticated, relay networks, API).
    pub sign: bool,
}

impl Injection {
    /// A library injection of `content` from `sender` to `recipients`.
    pub fn new(sender: impl Into<String>, recipients: Vec<String>, content: impl Into<Bytes>) -> Self {
        Injection {
            sender: sender.into(),
            recipients,
            content: content.into(),
            tenant: None,
            pool: None,
            priority: Priority::Bulk,
            protocol: Protocol::Local,
            peer: None,
            helo: None,
            auth_user: None,
            auth_results: None,
            sign: true,
        }
    }
}

/// The bytes a commit stores: in memory, or staged on disk while they arrived.
pub(crate) enum StoredBody {
    Bytes(Bytes),
    Sealed(mta_spool::SealedBody),
}

/// A small keyed record made durable in the same spool commit as a message (kept in the spool's aux tree,
/// read back with [`Spool::aux_get`]): e.g. the HTTP API's idempotency answer, which must never outlive or
/// predate its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Companion {
    key: Vec<u8>,
    value: Vec<u8>,
}

impl Companion {
    /// A record of `value` under `key`.
    pub fn new(key: Vec<u8>, value: Vec<u8>) -> Companion {
        Companion { key, value }
    }
}

impl From<Companion> for Op {
    fn from(c: Companion) -> Op {
        Op::AuxPut { key: c.key, value: c.value }
    }
}

/// A message the spool has made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Its queue id.
    pub id: QueueId,
    /// Number of recipients accepted.
    pub recipients: usize,
}

/// What start-up found in the spool.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Messages found.
    pub messages: usize,
    /// Records that could not be read and were quarantined: (key, reason).
    pub quarantined: Vec<(String, String)>,
}

struct Inner {
    config: EngineConfig,
    signer: Option<Arc<Signer>>,
    spool: Spool,
    resolver: Resolver,
    delivery: Delivery,
    events: EventLog,
    accepting: AtomicBool,
    /// Memory for message bytes in flight, shared by every reception.
    body_budget: BodyBudget,
    /// Inbound verification, when a method is on.
    verifier: Option<Arc<Verifier>>,
    /// Sender pre-flight, when signing keys are configured.
    preflight: Option<Arc<Preflight>>,
    /// The health state intake reads.
    backpressure: Backpressure,
    /// Event exporters (their health).
    exporters: Exporters,
    /// Final outcomes of finished messages.
    history: Arc<History>,
    /// The suppression list (checked at injection, fed by bounces and complaints).
    suppressions: Arc<Suppressions>,
    /// Background tasks the engine started (DNS stub, pre-flight refresh, health monitor, exporters, history
    /// pruning, TLS reporting): stopped at shutdown.
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Serializes queue imports: the duplicate check and the commit of one batch are one step.
    import_lock: tokio::sync::Mutex<()>,
}

/// The mail engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// A handle that does not keep the engine alive (for the engine's own background loops).
#[derive(Clone)]
pub(crate) struct WeakEngine(std::sync::Weak<Inner>);

impl WeakEngine {
    /// The engine, while anyone else still holds it.
    pub(crate) fn upgrade(&self) -> Option<Engine> {
        self.0.upgrade().map(|inner| Engine { inner })
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("hostname", &self.inner.config.hostname).finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Engine {
    /// Open the spool (blocking work off the runtime), recover what it holds, open the event log.
    pub async fn open(config: EngineConfig) -> Result<(Engine, RecoveryReport), EngineError> {
        let events = EventLog::open(config.event_log.as_deref())
            .map_err(|source| EngineError::EventLog {
                path: config.event_log.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                source,
            })?
            .with_exported(config.export.exported());
        let mut spool_config = SpoolConfig::new(config.spool_path.clone(), &config.node_id);
        spool_config.sled_cache_bytes = config.spool_cache_bytes;
        let resolver = Resolver::new(config.dns.clone()).map_err(EngineError::Dns)?;
        let signer = if config.dkim_keys.is_empty() {
            None
        } else {
            let mut signer = Signer::load_keys(&config.dkim_keys).map_err(EngineError::Auth)?;
            if let Some(d) = &config.dkim_fixed_domain {
                signer = signer.with_fixed_domain(d).map_err(EngineError::Auth)?;
            }
            Some(Arc::new(signer))
        };
        let config_budget = config.body_memory_budget;
        let spool = Spool::open_async(spool_config).await?;
        let history = {
            let (spool, history_config) = (spool.clone(), config.history);
            tokio::task::spawn_blocking(move || History::open_blocking(&spool, history_config))
                .await
                .map_err(|e| EngineError::Join(e.to_string()))??
        };
        let history = Arc::new(history);
        // The suppression list's index is rebuilt from the spool before anything is accepted.
        let load_spool = spool.clone();
        let suppressions = Arc::new(
            tokio::task::spawn_blocking(move || Suppressions::load(load_spool))
                .await
                .map_err(|e| EngineError::Join(e.to_string()))??,
        );
        let mut delivery_config = config.delivery.clone();
        delivery_config.history = Some(history.clone());
        delivery_config.suppressions = Some(suppressions.clone());
        if !delivery_config.own_names.iter().any(|n| n.eq_ignore_ascii_case(&config.hostname)) {
            delivery_config.own_names.push(config.hostname.clone());
        }
        let delivery =
            Delivery::new(delivery_config, spool.clone(), events.clone(), resolver.clone(), config.hostname.clone());
        // Rebuild the queues: every pending (message, domain) at its stored next-attempt time; deliveries
        // that were in flight at a crash kept their old time, so they are retried.
        let (scan_spool, scan_delivery) = (spool.clone(), delivery.clone());
        let report = tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
            let mut messages = 0usize;
            let scan = scan_spool.scan(|record| {
                messages += 1;
                scan_delivery.enqueue(&record);
            })?;
            // The walk left sled holding the decoded index in memory; start serving with a cold cache instead.
            scan_spool.release_scan_memory()?;
            Ok(RecoveryReport { messages, quarantined: scan.quarantined })
        })
        .await
        .map_err(|e| EngineError::Join(e.to_string()))??;
        metrics::gauge!("mta_spool_records").set(report.messages as f64);
        delivery.compact_memory();
        if config.delivery.enabled {
            delivery.start();
        }
        // Exporters read what the outbox holds (from before a crash too) and what commits append from now on.
        let (exporters, mut tasks) = crate::export::start(&spool, &config.export)?;
        tasks.push(tokio::spawn(history.clone().prune(spool.clone())));
        // Mail authentication resolves through our resolver pool: SPF (our evaluator) directly, mail-auth's
        // DKIM/DMARC/ARC through a loopback stub of it, so all share our cache and our caps; it runs only when
        // something needs it.
        let (mut verifier, mut preflight) = (None, None);
        if !config.auth.is_off() || signer.is_some() {
            let (stub, stub_task) = resolver
                .serve_stub(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .map_err(EngineError::DnsStub)?;
            tasks.push(stub_task);
            let authenticator =
                crate::auth::authenticator(stub, config.dns.lookup_timeout).map_err(EngineError::Auth)?;
            if !config.auth.is_off() {
                verifier = Some(Arc::new(
                    Verifier::new(authenticator.clone(), config.auth, config.hostname.clone())
                        .with_resolver(resolver.clone()),
                ));
            }
            if let Some(signer) = &signer {
                let p = Arc::new(
                    Preflight::new(
                        authenticator,
                        signer.clone(),
                        config.source_addresses.clone(),
                        config.hostname.clone(),
                    )
                    .with_resolver(resolver.clone()),
                );
                tasks.push(p.clone().spawn(crate::auth::DEFAULT_REFRESH));
                if config.hold_on_preflight_mismatch {
                    let check = p.clone();
                    delivery.set_hold_check(Arc::new(move |message: &[u8]| check.should_hold_message(message)));
                }
                preflight = Some(p);
            }
        }
        // The monitor samples the spool, our DNS upstreams, the event loop and the disk; intake reads its state.
        let (backpressure, monitor) = match &config.backpressure {
            Some(bp) => Backpressure::start(bp.clone(), spool.clone(), resolver.clone()),
            None => (Backpressure::disabled(), None),
        };
        tasks.extend(monitor);
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                signer,
                spool,
                resolver,
                delivery,
                events,
                accepting: AtomicBool::new(true),
                body_budget: BodyBudget::new(config_budget),
                verifier,
                preflight,
                backpressure,
                exporters,
                history,
                suppressions,
                tasks: parking_lot::Mutex::new(tasks),
                import_lock: tokio::sync::Mutex::new(()),
            }),
        };
        // TLS reporting (when `delivery.tls_report` is set) sends through the engine itself: started last.
        if let Some(task) = crate::tls_report::spawn(&engine) {
            engine.inner.tasks.lock().push(task);
        }
        Ok((engine, report))
    }

    /// The spool (for status queries and tools).
    pub fn spool(&self) -> &Spool {
        &self.inner.spool
    }

    /// The delivery engine (queue summary, suspend/resume).
    pub fn delivery(&self) -> &Delivery {
        &self.inner.delivery
    }

    /// The DKIM signer, when keys are configured.
    pub fn signer(&self) -> Option<&Arc<Signer>> {
        self.inner.signer.as_ref()
    }

    /// The resolver pool (shared by delivery and authentication).
    pub fn resolver(&self) -> &Resolver {
        &self.inner.resolver
    }

    /// The event log (subscribe for delivery events).
    pub fn events(&self) -> &EventLog {
        &self.inner.events
    }

    /// The final outcomes of message `id` once it is finished and gone from the spool, while history keeps them.
    pub async fn history(&self, id: &QueueId) -> Result<Option<HistoryRecord>, EngineError> {
        Ok(self.inner.history.get(&self.inner.spool, id).await?)
    }

    /// The event exporters (endpoint health).
    pub fn exporters(&self) -> &Exporters {
        &self.inner.exporters
    }

    /// The suppression list.
    pub fn suppressions(&self) -> &Arc<Suppressions> {
        &self.inner.suppressions
    }

    /// Split `recipients` into those that may be queued for a message of `tenant` and those suppressed
    /// (for that tenant or for every tenant); a `suppressed` event goes out for each of the latter. Memory only.
    pub async fn remove_suppressed(
        &self,
        sender: &str,
        tenant: Option<&str>,
        recipients: Vec<String>,
        source: &str,
    ) -> (Vec<String>, Vec<String>) {
        let list = &self.inner.suppressions;
        if list.is_empty() {
            return (recipients, Vec::new());
        }
        let (suppressed, kept): (Vec<String>, Vec<String>) =
            recipients.into_iter().partition(|r| list.is_suppressed(tenant, r));
        if !suppressed.is_empty() {
            self.emit_suppressed(sender, tenant, &suppressed, source).await;
        }
        (kept, suppressed)
    }

    /// `suppressed` events for recipients refused because they are on the suppression list.
    pub async fn emit_suppressed(&self, sender: &str, tenant: Option<&str>, recipients: &[String], source: &str) {
        metrics::counter!("mta_recipients_suppressed_total").increment(recipients.len() as u64);
        let timestamp = now_rfc3339();
        let response = crate::Response::local(550, (5, 7, 1), "Recipient suppressed");
        let events = recipients
            .iter()
            .enumerate()
            .map(|(index, address)| Event {
                event_id: event_id(&timestamp, index, address, EventType::Suppressed, 0),
                kind: EventType::Suppressed,
                id: String::new(),
                sender: sender.to_string(),
                recipient: address.clone(),
                domain: mta_spool::record::domain_of(address),
                timestamp: timestamp.clone(),
                response: response.clone(),
                mx: None,
                tenant: tenant.map(str::to_string),
                source: Some(source.to_string()),
                attempts: None,
                bounce_class: None,
                tls: None,
            })
            .collect();
        self.inner.events.emit_standalone(&self.inner.spool, events).await;
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Check an envelope without storing anything (the same checks `inject` makes).
    pub fn validate(&self, sender: &str, recipients: &[String], size: u64) -> Result<(), InjectError> {
        if !sender.is_empty() {
            check_address(sender).map_err(|reason| InjectError::InvalidSender { address: sender.into(), reason })?;
        }
        if recipients.is_empty() {
            return Err(InjectError::NoRecipients);
        }
        let max = self.inner.config.max_recipients;
        if recipients.len() > max {
            return Err(InjectError::TooManyRecipients { count: recipients.len(), max });
        }
        for (index, r) in recipients.iter().enumerate() {
            check_address(r).map_err(|reason| InjectError::InvalidRecipient { index, address: r.clone(), reason })?;
        }
        let max = self.inner.config.max_message_size;
        if size > max {
            return Err(InjectError::TooLarge { size, max });
        }
        Ok(())
    }

    /// Start receiving a message whose content arrives in pieces, with bounded memory (see [`Incoming`]).
    pub fn incoming(&self) -> Incoming {
        Incoming::new(self.clone(), self.inner.body_budget.clone())
    }

    /// Inbound verification (`None` when every method is off): SMTP verifies mail from outsiders with it.
    pub fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.inner.verifier.as_ref()
    }

    /// Sender pre-flight (`None` without signing keys): `GET /api/v1/senders` reads it.
    pub fn preflight(&self) -> Option<&Arc<Preflight>> {
        self.inner.preflight.as_ref()
    }

    /// The node's health state (always healthy without [`EngineConfig::backpressure`]).
    pub fn backpressure(&self) -> &Backpressure {
        &self.inner.backpressure
    }

    /// The budget for message bytes in memory (shared by every entry point).
    pub fn body_budget(&self) -> &BodyBudget {
        &self.inner.body_budget
    }

    /// The lock every queue import holds ([`crate::transfer`]).
    pub(crate) fn import_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.inner.import_lock
    }

    pub(crate) fn check_accepting(&self) -> Result<(), InjectError> {
        if self.inner.accepting.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(InjectError::ShuttingDown)
        }
    }

    /// [`Engine::inject`] under an id taken beforehand (from [`Incoming`]).
    pub(crate) async fn inject_as(&self, id: QueueId, injection: Injection) -> Result<Accepted, InjectError> {
        self.inject_prepared(id, injection, |_| Vec::new()).await
    }

    /// Make a message durable; returns after the fsync that covers it.
    pub async fn inject(&self, injection: Injection) -> Result<Accepted, InjectError> {
        self.inject_with(injection, |_| Vec::new()).await
    }

    /// Like [`Engine::inject`], plus small keyed records made durable in the same commit (for example the HTTP
    /// API's idempotency key, which must never outlive or predate its message). `companions` gets the queue id
    /// the message will have.
    pub async fn inject_with(
        &self,
        injection: Injection,
        companions: impl FnOnce(&QueueId) -> Vec<Companion>,
    ) -> Result<Accepted, InjectError> {
        let id = self.inner.spool.next_id();
        self.inject_prepared(id, injection, companions).await
    }

    async fn inject_prepared(
        &self,
        id: QueueId,
        injection: Injection,
        companions: impl FnOnce(&QueueId) -> Vec<Companion>,
    ) -> Result<Accepted, InjectError> {
        self.check_accepting()?;
        self.validate(&injection.sender, &injection.recipients, injection.content.len() as u64)?;
        let id_copy = id.clone();
        let single = (injection.recipients.len() == 1).then(|| injection.recipients[0].as_str());
        let header = received_header(
            injection.helo.as_deref(),
            injection.peer,
            &self.inner.config.hostname,
            injection.protocol,
            id.as_str(),
            single,
        );
        // Nobody else may speak for our authserv-id (RFC 8601 §5).
        let content = strip_spoofed_results(injection.content.clone(), &self.inner.config.hostname);
        let auth_results = injection.auth_results.as_deref().unwrap_or("");
        let mut data = BytesMut::with_capacity(auth_results.len() + header.len() + content.len());
        data.extend_from_slice(auth_results.as_bytes());
        data.extend_from_slice(header.as_bytes());
        data.extend_from_slice(&content);
        let mut data = data.freeze();
        if injection.sign {
            if let Some(signature) = self.signature(data.clone()).await? {
                let mut signed = BytesMut::with_capacity(signature.len() + data.len());
                signed.extend_from_slice(signature.as_bytes());
                signed.extend_from_slice(&data);
                data = signed.freeze();
            }
        }
        self.commit_message(id, injection, StoredBody::Bytes(data), companions(&id_copy)).await
    }

    /// The common end of every injection: the record, one durable commit with its companions, the queues,
    /// events.
    pub(crate) async fn commit_message(
        &self,
        id: QueueId,
        injection: Injection,
        body: StoredBody,
        companions: Vec<Companion>,
    ) -> Result<Accepted, InjectError> {
        let spool = &self.inner.spool;
        let protocol = match injection.protocol {
            Protocol::Http { .. } => "http",
            Protocol::Local => "api",
            _ => "smtp",
        };
        let (sender, tenant) = (injection.sender.clone(), injection.tenant.clone());
        let mut record = MessageRecord::new(id.clone(), injection.sender, &injection.recipients, now_ms());
        record.tenant = injection.tenant;
        record.pool = injection.pool;
        record.priority = injection.priority;
        record.source = Source {
            protocol: protocol.into(),
            peer: injection.peer.map(|p| p.to_string()),
            helo: injection.helo,
            auth: injection.auth_user,
        };
        let mut ops = vec![match body {
            StoredBody::Bytes(body) => Op::Put { record, body },
            StoredBody::Sealed(body) => Op::PutSealed { record, body },
        }];
        ops.extend(companions.into_iter().map(Op::from));
        let timestamp = now_rfc3339();
        let response = crate::Response::local(250, (2, 0, 0), format!("Ok: queued as {id}"));
        let events: Vec<Event> = injection
            .recipients
            .iter()
            .enumerate()
            .map(|(index, address)| Event {
                event_id: event_id(id.as_str(), index, address, EventType::Reception, 0),
                kind: EventType::Reception,
                id: id.to_string(),
                sender: sender.clone(),
                recipient: address.clone(),
                domain: mta_spool::record::domain_of(address),
                timestamp: timestamp.clone(),
                response: response.clone(),
                mx: None,
                tenant: tenant.clone(),
                source: Some(protocol.to_string()),
                attempts: None,
                bounce_class: None,
                tls: None,
            })
            .collect();
        // A reception event is exported only if the message is durable, and always if it is: same commit.
        ops.extend(self.inner.events.outbox_ops(&events));
        // The committer hands back the stored record (with its body location): no copy on the way in.
        let stored = spool.commit_returning(ops).await?;
        let Some(record) = stored.into_iter().next() else {
            return Err(InjectError::Spool(mta_spool::SpoolError::NotFound(id)));
        };
        self.inner.delivery.enqueue(&record);
        metrics::counter!("mta_messages_received_total", "protocol" => protocol).increment(1);
        metrics::counter!("mta_recipients_received_total").increment(record.recipients.len() as u64);
        self.inner.events.emit(events).await;
        Ok(Accepted { id, recipients: record.recipients.len() })
    }

    /// Our DKIM-Signature header(s) for `message` (with CRLF), when a key applies.
    pub(crate) async fn signature(&self, message: Bytes) -> Result<Option<String>, InjectError> {
        let Some(signer) = &self.inner.signer else {
            return Ok(None);
        };
        // The signer's pool runs one signature per CPU at a time, its bounded queue holding the next ones.
        signer.sign_blocking(message).await.map_err(|e| InjectError::Signing(e.to_string()))
    }

    /// Stop accepting new messages (graceful stop); already-acknowledged ones stay in the spool.
    pub fn stop_accepting(&self) {
        self.inner.accepting.store(false, Ordering::Release);
    }

    /// A handle that does not keep the engine alive.
    pub(crate) fn downgrade(&self) -> WeakEngine {
        WeakEngine(Arc::downgrade(&self.inner))
    }

    /// True until [`Engine::stop_accepting`] is called.
    pub fn is_accepting(&self) -> bool {
        self.inner.accepting.load(Ordering::Acquire)
    }

    /// Stop accepting, let in-flight deliveries finish and record their results (up to `limit`), then flush
    /// and close the spool.
    pub async fn shutdown_within(&self, limit: std::time::Duration) {
        self.stop_accepting();
        for task in self.inner.tasks.lock().drain(..) {
            task.abort();
        }
        self.inner.delivery.shutdown(limit).await;
        // The reporting loop was stopped above: the sessions counted since its last tick are kept too.
        if let Some(reports) = self.inner.delivery.tls_reports() {
            reports.flush().await;
        }
        self.inner.spool.close().await;
    }

    /// [`Engine::shutdown_within`] 30 seconds.
    pub async fn shutdown(&self) {
        self.shutdown_within(std::time::Duration::from_secs(30)).await;
    }
}
