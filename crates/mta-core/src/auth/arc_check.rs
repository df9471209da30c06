//! Structural checks of a message's ARC sets that mail-auth 0.13.3 does not make, so that a
//! malformed chain is `arc=fail` (RFC 8617 §5.2) instead of `pass` or `none`:
//!
//! - ARC-Seal and ARC-Message-Signature are DKIM tag-lists (RFC 6376 §3.2): tag names are
//!   case-sensitive and `ALPHA *(ALPHA / DIGIT / "_")`, no tag twice, no empty tag-spec (`;;`).
//!   mail-auth skips what it does not understand, so `A=`, a duplicated tag or a stray `;` passed.
//! - Every required tag is present (RFC 8617 §4.1.2, §4.1.3) and `a=` names a SHA-256
//!   algorithm: mail-auth assumes `rsa-sha256` when `a=` is missing and accepted `rsa-sha1`.
//! - The ARC-Message-Signature does not sign ARC-Seal fields (RFC 8617 §4.1.2).
//! - Each instance `i=1..N` has exactly one ARC-Seal, ARC-Message-Signature and
//!   ARC-Authentication-Results (RFC 8617 §4.2.1, §5.2 step 1): mail-auth reported `none` when
//!   seals were present but no message signature.
//!
//! These only ever turn a result into `fail`; the cryptographic checks stay mail-auth's.

/// Why the ARC header fields of `message` cannot form a valid chain, or `None` when they are
/// well formed (or absent).
pub(crate) fn malformed(message: &[u8]) -> Option<String> {
    let mut seals = Vec::new();
    let mut signatures = Vec::new();
    let mut results = Vec::new();
    for (name, value) in header_fields(message) {
        let value = String::from_utf8_lossy(value);
        if name.eq_ignore_ascii_case(b"ARC-Seal") {
            seals.push(check_tags(&value, &["i", "a", "b", "cv", "d", "s"]).map_err(|e| format!("ARC-Seal: {e}")));
        } else if name.eq_ignore_ascii_case(b"ARC-Message-Signature") {
            signatures.push(
                check_tags(&value, &["i", "a", "b", "bh", "d", "h", "s"])
                    .and_then(|tags| no_seal_signed(&tags).map(|()| tags))
                    .map_err(|e| format!("ARC-Message-Signature: {e}")),
            );
        } else if name.eq_ignore_ascii_case(b"ARC-Authentication-Results") {
            results.push(aar_instance(&value).ok_or_else(|| "ARC-Authentication-Results: no valid i=".to_string()));
        }
    }
    if seals.is_empty() && signatures.is_empty() && results.is_empty() {
        return None;
    }
    let instances = |tags: Vec<Result<Vec<(String, String)>, String>>| -> Result<Vec<u32>, String> {
        tags.into_iter().map(|t| t.and_then(|t| tag_instance(&t))).collect()
    };
    let check = || -> Result<(), String> {
        let seals = instances(seals)?;
        let signatures = instances(signatures)?;
        let results: Vec<u32> = results.into_iter().collect::<Result<_, _>>()?;
        let n = seals.len().max(signatures.len()).max(results.len());
        for (what, mut found) in
            [("ARC-Seal", seals), ("ARC-Message-Signature", signatures), ("ARC-Authentication-Results", results)]
        {
            found.sort_unstable();
            let expected: Vec<u32> = (1..=n as u32).collect();
            if found != expected {
                return Err(format!("{what} instances {found:?}, expected one each of 1..={n}"));
            }
        }
        Ok(())
    };
    check().err()
}

/// The tags of a DKIM-style tag-list, strictly parsed, with the required ones present and a
/// SHA-256 `a=`.
fn check_tags(value: &str, required: &[&str]) -> Result<Vec<(String, String)>, String> {
    let mut tags: Vec<(String, String)> = Vec::new();
    let specs: Vec<&str> = value.split(';').collect();
    for (n, spec) in specs.iter().enumerate() {
        let spec = spec.trim_matches(|c: char| c.is_ascii_whitespace());
        if spec.is_empty() {
            // only a single trailing ";" may leave an empty tag-spec
            if n + 1 == specs.len() && n > 0 {
                continue;
            }
            return Err("empty tag-spec".into());
        }
        let Some((name, v)) = spec.split_once('=') else {
            return Err(format!("tag-spec without '=': {spec:?}"));
        };
        let name = name.trim_matches(|c: char| c.is_ascii_whitespace());
        let valid_name = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!("invalid tag name {name:?}"));
        }
        if tags.iter().any(|(t, _)| t == name) {
            return Err(format!("tag {name}= twice"));
        }
        tags.push((name.to_string(), v.chars().filter(|c| !c.is_ascii_whitespace()).collect()));
    }
    for r in required {
        if !tags.iter().any(|(t, _)| t == r) {
            return Err(format!("no {r}= tag"));
        }
    }
    match tags.iter().find(|(t, _)| t == "a").map(|(_, v)| v.to_ascii_lowercase()) {
        Some(a) if a == "rsa-sha256" || a == "ed25519-sha256" => Ok(tags),
        a => Err(format!("unsupported algorithm {a:?}")),
    }
}

/// RFC 8617 §4.1.2: ARC-Seal fields are never signed by an ARC-Message-Signature.
fn no_seal_signed(tags: &[(String, String)]) -> Result<(), String> {
    let h = tags.iter().find(|(t, _)| t == "h").map_or("", |(_, v)| v.as_str());
    if h.split(':').any(|name| name.trim().eq_ignore_ascii_case("arc-seal")) {
        return Err("h= includes ARC-Seal".into());
    }
    Ok(())
}

fn tag_instance(tags: &[(String, String)]) -> Result<u32, String> {
    let i = tags.iter().find(|(t, _)| t == "i").map_or("", |(_, v)| v.as_str());
    instance(i).ok_or_else(|| format!("invalid instance i={i}"))
}

/// `i=N` at the start of an ARC-Authentication-Results value.
fn aar_instance(value: &str) -> Option<u32> {
    let first = value.split(';').next()?;
    let (name, v) = first.split_once('=')?;
    (name.trim() == "i").then_some(())?;
    instance(v.trim())
}

/// An instance number: 1..=50 (RFC 8617 §4.2.1).
fn instance(s: &str) -> Option<u32> {
    s.parse::<u32>().ok().filter(|i| (1..=50).contains(i) && s.bytes().all(|b| b.is_ascii_digit()))
}

/// `(name, value)` of each header field, up to the empty line; the value keeps its folding.
fn header_fields(m: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut spans = Vec::new();
    let mut pos = 0;
    let mut current: Option<usize> = None;
    while pos < m.len() {
        let end = m[pos..].iter().position(|&c| c == b'\n').map_or(m.len(), |i| pos + i + 1);
        let line = &m[pos..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some(s) = current {
                spans.push((s, pos));
            }
            current = Some(pos);
        }
        pos = end;
    }
    if let Some(s) = current {
        spans.push((s, pos));
    }
    spans
        .into_iter()
        .filter_map(|(start, end)| {
            let field = &m[start..end];
            let colon = field.iter().position(|&c| c == b':')?;
            Some((field[..colon].trim_ascii(), &field[colon + 1..]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEAL: &str = "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.org; s=s; b=AAAA\r\n";
    const AMS: &str = "ARC-Message-Signature: i=1; a=rsa-sha256; d=example.org; s=s;\r\n\th=from:to; bh=AA; b=AAAA\r\n";
    const AAR: &str = "ARC-Authentication-Results: i=1; lists.example.org; spf=pass\r\n";

    fn msg(headers: &[&str]) -> Vec<u8> {
        let mut m = headers.concat();
        m.push_str("From: a@example.org\r\n\r\nbody\r\n");
        m.into_bytes()
    }

    #[test]
    fn a_complete_set_is_well_formed_and_no_set_is_nothing() {
        assert_eq!(malformed(&msg(&[SEAL, AMS, AAR])), None);
        assert_eq!(malformed(&msg(&[])), None);
    }

    #[test]
    fn syntax_and_structure_errors_are_found() {
        for (what, headers) in [
            ("missing AMS", vec![SEAL, AAR]),
            ("two seals", vec![SEAL, SEAL, AMS, AAR]),
            ("dup tag", vec!["ARC-Seal: i=1; a=rsa-sha256; a=rsa-sha256; cv=none; d=e; s=s; b=A\r\n", AMS, AAR]),
            ("upper-case tag", vec!["ARC-Seal: i=1; A=rsa-sha256; cv=none; d=e; s=s; b=A\r\n", AMS, AAR]),
            ("stray ;", vec!["ARC-Seal: i=1; a=rsa-sha256;; cv=none; d=e; s=s; b=A\r\n", AMS, AAR]),
            ("sha1", vec!["ARC-Seal: i=1; a=rsa-sha1; cv=none; d=e; s=s; b=A\r\n", AMS, AAR]),
            (
                "AMS signs AS",
                vec![SEAL, "ARC-Message-Signature: i=1; a=rsa-sha256; d=e; s=s; h=from:arc-seal; bh=A; b=A\r\n", AAR],
            ),
            ("bad AAR", vec![SEAL, AMS, "ARC-Authentication-Results: lists.example.org; i=1\r\n"]),
            ("i=0", vec!["ARC-Seal: i=0; a=rsa-sha256; cv=none; d=e; s=s; b=A\r\n", AMS, AAR]),
        ] {
            assert!(malformed(&msg(&headers)).is_some(), "{what}");
        }
    }
}
