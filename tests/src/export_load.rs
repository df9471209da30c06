//! Mixed-outcome load for the event export crash tests (webhook and AMQP): which recipients a message has, and
//! an SMTP injector that records what the server acknowledged and stops where a killed server stopped answering.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::{queued_id, RawSmtp};

/// One acknowledged message: its queue id and recipients.
pub type Acked = (String, Vec<String>);

/// Recipients of message `i`: always one delivered; every 5th also one bounced, every 7th one deferred.
pub fn recipients(i: usize) -> Vec<String> {
    let mut r = vec![format!("ok{i}@d{}.test", i % 3)];
    if i.is_multiple_of(5) {
        r.push(format!("bad{i}@d{}.test", (i + 1) % 3));
    }
    if i.is_multiple_of(7) {
        r.push(format!("later{i}@d{}.test", (i + 2) % 3));
    }
    r
}

/// Inject messages `from..to` over one SMTP session until the server stops answering; returns how far it got.
pub fn inject(smtp: SocketAddr, from: usize, to: usize, acked: &Mutex<Vec<Acked>>) -> usize {
    let (mut c, greeting) = RawSmtp::connect(smtp);
    if !greeting.starts_with("220") {
        return from;
    }
    c.send(b"EHLO load.test\r\n");
    if !c.reply().starts_with("250") {
        return from;
    }
    for i in from..to {
        let rcpts = recipients(i);
        // The null sender: bounces make no DSN, so every event is about a message the test injected.
        let mut cmds = String::from("MAIL FROM:<>\r\n");
        for r in &rcpts {
            cmds.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        cmds.push_str("DATA\r\n");
        c.send(cmds.as_bytes());
        for _ in 0..rcpts.len() + 2 {
            if c.reply().is_empty() {
                return i;
            }
        }
        c.send(format!("Subject: export {i}\r\n\r\nbody {i}\r\n.\r\n").as_bytes());
        let reply = c.reply();
        let Some(id) = queued_id(&reply).filter(|_| reply.starts_with("250")) else { return i };
        acked.lock().unwrap().push((id, rcpts));
        // Spread injection out so the kills land while messages arrive, deliver and export at once.
        std::thread::sleep(Duration::from_millis(4));
    }
    to
}
