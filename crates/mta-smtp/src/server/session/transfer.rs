//! DATA and BDAT: receiving the message and streaming it to the handler's content sink.
//!
//! The session never holds a whole message: each read's worth of unstuffed content goes to the
//! [`ContentSink`] the handler opened, and only the envelope reaches [`Handler::queue`] at the end.

use super::{Flow, Session, SessionError, State, Txn};
use crate::proto::command::Body;
use crate::proto::data::{BdatReceiver, ContentReceiver, DataError, DataReceiver, HopCounter, Progress};
use crate::server::handler::{ContentSink, Handler, Transaction};
use crate::Reply;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// A message being received: where its content goes, and what has been seen of it.
pub(super) struct Incoming<C> {
    txn: Txn,
    content: C,
    hops: HopCounter,
    /// The sink refused the content: its reply is sent at the end; nothing more is written.
    refused: Option<Reply>,
    /// Content octets handled since this task last yielded.
    since_yield: usize,
}

/// Content octets a session handles before it lets other tasks run.
const YIELD_EVERY: usize = 64 << 10;

impl<C: ContentSink> Incoming<C> {
    /// Hands the receiver's new content to the sink (and the hop counter).
    async fn forward(&mut self, chunk: &[u8]) {
        self.since_yield += chunk.len();
        if self.since_yield >= YIELD_EVERY {
            // A client streaming fast never makes the read wait; give the other sessions (and the timers) their
            // turn so hundreds of large uploads cannot stall the event loop.
            self.since_yield = 0;
            tokio::task::yield_now().await;
        }
        if chunk.is_empty() || self.refused.is_some() {
            return;
        }
        self.hops.feed(chunk);
        if let Err(reply) = self.content.write(chunk).await {
            self.refused = Some(reply);
        }
    }
}

impl<C> std::fmt::Debug for Incoming<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").field("txn", &self.txn).field("hops", &self.hops.count()).finish_non_exhaustive()
    }
}

fn envelope(txn: &Txn) -> Transaction {
    Transaction {
        sender: txn.sender.clone(),
        recipients: txn.rcpts.clone(),
        body_8bit: txn.params.body == Some(Body::EightBitMime),
        smtputf8: txn.params.smtputf8,
    }
}

impl<S, H> Session<S, H>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    H: Handler,
{
    pub(super) async fn data(&mut self) -> Result<Flow, SessionError> {
        match &self.state {
            State::Mail(txn) if !txn.rcpts.is_empty() => {}
            State::Mail(_) => return Ok(self.error(Reply::fixed(554, 5, 5, 1, "Error: no valid recipients"))),
            State::Bdat(..) => return Ok(self.error(Reply::fixed(503, 5, 5, 1, "Error: DATA after BDAT"))),
            State::Connected | State::Greeted => {
                return Ok(self.error(Reply::fixed(503, 5, 5, 1, "Error: need MAIL and RCPT commands")))
            }
        }
        let State::Mail(txn) = std::mem::replace(&mut self.state, State::Greeted) else {
            return Ok(Flow::Continue);
        };
        let content = match self.handler.begin_content(&self.info, &envelope(&txn)).await {
            Ok(content) => content,
            Err(reply) => return Ok(self.reply(&reply)),
        };
        let mut incoming = Incoming { txn, content, hops: HopCounter::new(), refused: None, since_yield: 0 };
        self.reply(&Reply::basic(354, "End data with <CR><LF>.<CR><LF>"));
        let mut receiver = DataReceiver::new(self.config.max_line, self.config.max_message_size);
        if self.receive(&mut receiver, &mut incoming).await? == Flow::Close {
            return Ok(Flow::Close);
        }
        let end = receiver.finish();
        self.deliver(incoming, end).await
    }

    /// Feeds the input to `receiver` and what it stores on to the handler's sink, reading more within the
    /// content deadlines, until the receiver is done (the end of DATA, or the end of a BDAT chunk).
    /// Shutdown is not watched here: a message being received is allowed to finish.
    async fn receive(
        &mut self,
        receiver: &mut impl ContentReceiver,
        incoming: &mut Incoming<H::Content>,
    ) -> Result<Flow, SessionError> {
        let started = Instant::now();
        let mut received = 0u64;
        loop {
            if !self.inbuf.is_empty() {
                let progress = receiver.feed(&self.inbuf);
                incoming.forward(receiver.output()).await;
                receiver.clear_output();
                match progress {
                    Progress::NeedMore => {
                        received += self.inbuf.len() as u64;
                        self.inbuf.clear();
                    }
                    Progress::Done { consumed } => {
                        self.inbuf.advance(consumed);
                        return Ok(Flow::Continue);
                    }
                }
            }
            let input = self.read_more(self.content_wait(started, received)).await?;
            if self.end_on(input) == Flow::Close {
                return Ok(Flow::Close);
            }
        }
    }

    pub(super) async fn bdat(&mut self, size: u64, last: bool) -> Result<Flow, SessionError> {
        let refusal = match &self.state {
            State::Mail(txn) if txn.rcpts.is_empty() => Some(Reply::fixed(554, 5, 5, 1, "Error: no valid recipients")),
            State::Mail(_) | State::Bdat(..) => None,
            State::Connected | State::Greeted => Some(Reply::fixed(503, 5, 5, 1, "Error: need MAIL and RCPT commands")),
        };
        if let Some(reply) = refusal {
            // The chunk's bytes are on their way whatever we answer: skip them to stay in sync.
            if self.skip(size).await? == Flow::Close {
                return Ok(Flow::Close);
            }
            return Ok(self.error(reply));
        }
        let (mut incoming, mut receiver) = match std::mem::replace(&mut self.state, State::Greeted) {
            State::Mail(txn) => match self.handler.begin_content(&self.info, &envelope(&txn)).await {
                Ok(content) => (
                    Incoming { txn, content, hops: HopCounter::new(), refused: None, since_yield: 0 },
                    BdatReceiver::new(self.config.max_line, self.config.max_message_size),
                ),
                Err(reply) => {
                    if self.skip(size).await? == Flow::Close {
                        return Ok(Flow::Close);
                    }
                    return Ok(self.reply(&reply));
                }
            },
            State::Bdat(incoming, receiver) => (*incoming, receiver),
            State::Connected | State::Greeted => return Ok(Flow::Continue),
        };
        receiver.start_chunk(size);
        if receiver.remaining() > 0 && self.receive(&mut receiver, &mut incoming).await? == Flow::Close {
            return Ok(Flow::Close);
        }
        if let Some(e) = receiver.error() {
            // RFC 3030 §4.2: after a failed chunk the client sends no more; the transaction is over.
            return Ok(self.reply(&e.reply()));
        }
        if !last {
            self.state = State::Bdat(Box::new(incoming), receiver);
            return Ok(self.reply(&Reply::new(250, (2, 0, 0), format!("Ok: {size} octets received"))));
        }
        let end = receiver.finish();
        self.deliver(incoming, end).await
    }

    /// Discards `size` octets of a refused chunk.
    async fn skip(&mut self, mut size: u64) -> Result<Flow, SessionError> {
        let started = Instant::now();
        let mut received = 0u64;
        loop {
            let take = usize::try_from(size).map_or(self.inbuf.len(), |s| s.min(self.inbuf.len()));
            self.inbuf.advance(take);
            size -= take as u64;
            received += take as u64;
            if size == 0 {
                return Ok(Flow::Continue);
            }
            let input = self.read_more(self.content_wait(started, received)).await?;
            if self.end_on(input) == Flow::Close {
                return Ok(Flow::Close);
            }
        }
    }

    /// The end of a message: protocol checks done by the receiver, then the hop limit, then the handler.
    /// `end` is the receiver's verdict and the content it had not handed out yet.
    async fn deliver(
        &mut self,
        mut incoming: Incoming<H::Content>,
        end: Result<Bytes, DataError>,
    ) -> Result<Flow, SessionError> {
        match end {
            Ok(rest) => incoming.forward(&rest).await,
            Err(e) => return Ok(self.reply(&e.reply())),
        }
        if let Some(reply) = incoming.refused.take() {
            return Ok(self.reply(&reply));
        }
        if incoming.hops.count() > self.config.max_hops {
            return Ok(self.reply(&Reply::fixed(554, 5, 4, 6, "Too many hops (mail loop?)")));
        }
        let transaction = envelope(&incoming.txn);
        let reply = match self.handler.queue(&self.info, transaction, incoming.content).await {
            Ok(id) => Reply::new(250, (2, 0, 0), format!("Ok: queued as {id}")),
            Err(reply) => reply,
        };
        Ok(self.reply(&reply))
    }
}
