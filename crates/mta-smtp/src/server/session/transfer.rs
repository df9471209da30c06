//! DATA and BDAT: receiving the message and handing it to the handler.

use super::{Flow, Session, SessionError, State, Txn};
use crate::proto::command::Body;
use crate::proto::data::{count_received_headers, BdatReceiver, DataError, DataReceiver, Progress};
use crate::server::handler::{Handler, Transaction};
use crate::Reply;
use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite};

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
        self.reply(&Reply::basic(354, "End data with <CR><LF>.<CR><LF>"));
        let mut receiver = DataReceiver::new(self.config.max_line, self.config.max_message_size);
        loop {
            if !self.inbuf.is_empty() {
                match receiver.feed(&self.inbuf) {
                    Progress::NeedMore => self.inbuf.clear(),
                    Progress::Done { consumed } => {
                        self.inbuf.advance(consumed);
                        break;
                    }
                }
            }
            // Shutdown is not watched here: a message being received is allowed to finish.
            let input = self.read_more(self.config.timeout_data, false).await?;
            if self.end_on(input) == Flow::Close {
                return Ok(Flow::Close);
            }
        }
        self.deliver(txn, receiver.finish()).await
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
        let (txn, mut receiver) = match std::mem::replace(&mut self.state, State::Greeted) {
            State::Mail(txn) => (txn, BdatReceiver::new(self.config.max_line, self.config.max_message_size)),
            State::Bdat(txn, receiver) => (txn, receiver),
            State::Connected | State::Greeted => return Ok(Flow::Continue),
        };
        receiver.start_chunk(size);
        while receiver.remaining() > 0 {
            if !self.inbuf.is_empty() {
                match receiver.feed(&self.inbuf) {
                    Progress::NeedMore => self.inbuf.clear(),
                    Progress::Done { consumed } => {
                        self.inbuf.advance(consumed);
                        break;
                    }
                }
                continue;
            }
            let input = self.read_more(self.config.timeout_data, false).await?;
            if self.end_on(input) == Flow::Close {
                return Ok(Flow::Close);
            }
        }
        if let Some(e) = receiver.error() {
            // RFC 3030 §4.2: after a failed chunk the client sends no more; the transaction is over.
            return Ok(self.reply(&e.reply()));
        }
        if !last {
            self.state = State::Bdat(txn, receiver);
            return Ok(self.reply(&Reply::new(250, (2, 0, 0), format!("Ok: {size} octets received"))));
        }
        self.deliver(txn, receiver.finish()).await
    }

    /// Discards `size` octets of a refused chunk.
    async fn skip(&mut self, mut size: u64) -> Result<Flow, SessionError> {
        loop {
            let take = usize::try_from(size).map_or(self.inbuf.len(), |s| s.min(self.inbuf.len()));
            self.inbuf.advance(take);
            size -= take as u64;
            if size == 0 {
                return Ok(Flow::Continue);
            }
            let input = self.read_more(self.config.timeout_data, false).await?;
            if self.end_on(input) == Flow::Close {
                return Ok(Flow::Close);
            }
        }
    }

    /// The end of a message: protocol checks done by the receiver, then the hop limit, then the handler.
    async fn deliver(&mut self, txn: Txn, content: Result<Bytes, DataError>) -> Result<Flow, SessionError> {
        let data = match content {
            Ok(data) => data,
            Err(e) => return Ok(self.reply(&e.reply())),
        };
        if count_received_headers(&data) > self.config.max_hops {
            return Ok(self.reply(&Reply::fixed(554, 5, 4, 6, "Too many hops (mail loop?)")));
        }
        let transaction = Transaction {
            sender: txn.sender,
            recipients: txn.rcpts,
            data,
            body_8bit: txn.params.body == Some(Body::EightBitMime),
            smtputf8: txn.params.smtputf8,
        };
        let reply = match self.handler.queue(&self.info, transaction).await {
            Ok(id) => Reply::new(250, (2, 0, 0), format!("Ok: queued as {id}")),
            Err(reply) => reply,
        };
        Ok(self.reply(&reply))
    }
}
