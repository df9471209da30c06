//! Body hashes of signatures with `l=`, computed as RFC 6376 says.
//!
//! `l=` counts octets of the *canonicalized* body (RFC 6376 §3.5, §3.7). mail-auth 0.13.3 cuts the
//! raw body at `l` octets and canonicalizes that, which gives another hash under relaxed body
//! canonicalization (whitespace runs shrink, so the cut falls elsewhere): signatures that dkimpy
//! and OpenDKIM verify failed. mail-auth computes every body hash at parse time and keeps them in
//! the public `body_hashes`, so we recompute the `l=` ones there before verification.

use mail_auth::common::headers::Writable;
use mail_auth::AuthenticatedMessage;

/// Recompute each body hash with a length limit over the canonicalized body cut at `l`; a limit
/// longer than the canonicalized body matches nothing (the signature fails, RFC 6376 §6.1.3).
pub(crate) fn fix_length_limited_hashes(m: &mut AuthenticatedMessage<'_>) {
    if m.body_hashes.iter().all(|(_, _, l, _)| *l == 0) {
        return;
    }
    let body = m.raw_message.get(m.body_offset as usize..).unwrap_or_default();
    for (cb, ha, l, bh) in m.body_hashes.iter_mut().filter(|(_, _, l, _)| *l > 0) {
        let mut canonical: Vec<u8> = Vec::with_capacity(body.len());
        cb.canonical_body(body, 0).write(&mut canonical);
        *bh = match usize::try_from(*l).ok().and_then(|l| canonical.get(..l)) {
            Some(signed) => ha.hash(signed).as_ref().to_vec(),
            None => Vec::new(),
        };
    }
}
