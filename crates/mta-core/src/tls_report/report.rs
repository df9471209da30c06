//! The RFC 8460 report itself: the `_smtp._tls` TXT record (§3), the JSON aggregate report (§4), its gzip
//! form and the mail that carries it to a `mailto:` address (§5.3).

use std::io::Write;

use base64::Engine as _;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::counts::Due;

/// Where reports go, from the `_smtp._tls.<domain>` TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `https://host[:port]/path`: POSTed as `application/tlsrpt+gzip`.
    Https(String),
    /// `mailto:address`: sent as mail through our own queue.
    Mailto(String),
}

impl Rua {
    /// The destination as the record names it (`https://…`, `mailto:…`): how a sent report is remembered.
    pub fn as_uri(&self) -> String {
        match self {
            Rua::Https(url) => url.clone(),
            Rua::Mailto(addr) => format!("mailto:{addr}"),
        }
    }
}

/// The `rua` destinations of a TLSRPT record (`v=TLSRPTv1; rua=mailto:a@b,https://c/d`), or `None` when the
/// TXT record is not one. Unknown schemes are skipped.
pub fn parse_record(txt: &str) -> Option<Vec<Rua>> {
    let mut fields = txt.split(';').map(str::trim);
    if !fields.next()?.eq_ignore_ascii_case("v=TLSRPTv1") {
        return None;
    }
    let rua = fields.find_map(|f| {
        let (k, v) = f.split_once('=')?;
        k.trim().eq_ignore_ascii_case("rua").then(|| v.trim().to_string())
    })?;
    let out: Vec<Rua> = rua
        .split(',')
        .map(str::trim)
        .filter_map(|u| {
            if let Some(addr) = u.strip_prefix("mailto:") {
                let addr = addr.split('?').next().unwrap_or("");
                (addr.contains('@') && !addr.contains(char::is_whitespace)).then(|| Rua::Mailto(addr.to_string()))
            } else if u.starts_with("https://") {
                Some(Rua::Https(u.to_string()))
            } else {
                None
            }
        })
        .collect();
    Some(out)
}

fn rfc3339(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Who we are in reports.
#[derive(Debug, Clone)]
pub struct Submitter {
    /// `organization-name`.
    pub organization: String,
    /// `contact-info` (also the From of mailed reports).
    pub contact: String,
    /// Our host name (report ids, Message-ID).
    pub hostname: String,
}

impl Submitter {
    /// The report id of `due`: unique per period and domain.
    pub fn report_id(&self, due: &Due) -> String {
        format!("{}-{}@{}", due.start, due.domain, self.hostname)
    }
}

/// The JSON report (§4.4) for one domain and period.
pub fn json(submitter: &Submitter, due: &Due) -> serde_json::Value {
    let c = &due.counts;
    let policy = c.policy.clone().unwrap_or(super::PolicyDesc {
        policy_type: "no-policy-found".into(),
        policy_string: Vec::new(),
        mx_host: Vec::new(),
    });
    let failures: Vec<serde_json::Value> = c
        .failures
        .iter()
        .map(|(k, n)| {
            let mut row = serde_json::json!({"result-type": k.result_type, "failed-session-count": n});
            if let Some(mx) = &k.receiving_mx_hostname {
                row["receiving-mx-hostname"] = mx.clone().into();
            }
            if let Some(ip) = k.receiving_ip {
                row["receiving-ip"] = ip.to_string().into();
            }
            row
        })
        .collect();
    let mut policy_json = serde_json::json!({
        "policy-type": policy.policy_type,
        "policy-domain": due.domain,
    });
    if !policy.policy_string.is_empty() {
        policy_json["policy-string"] = policy.policy_string.into();
    }
    if !policy.mx_host.is_empty() {
        policy_json["mx-host"] = policy.mx_host.into();
    }
    serde_json::json!({
        "organization-name": submitter.organization,
        "date-range": {"start-datetime": rfc3339(due.start), "end-datetime": rfc3339(due.end)},
        "contact-info": submitter.contact,
        "report-id": submitter.report_id(due),
        "policies": [{
            "policy": policy_json,
            "summary": {
                "total-successful-session-count": c.success,
                "total-failure-session-count": c.failure,
            },
            "failure-details": failures,
        }],
    })
}

/// `report` gzipped (§5.2: `application/tlsrpt+gzip`).
pub fn gzip(report: &serde_json::Value) -> std::io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&serde_json::to_vec(report)?)?;
    enc.finish()
}

/// The mail carrying a gzipped report to `to` (§5.3): `multipart/report; report-type="tlsrpt"`, with the
/// `TLS-Report-Domain` and `TLS-Report-Submitter` headers and the report as an attachment.
pub fn mail(submitter: &Submitter, due: &Due, to: &str, gz: &[u8]) -> Vec<u8> {
    let id = submitter.report_id(due);
    let boundary = format!("tlsrpt-{}-{}", due.start, due.domain.replace('.', "-"));
    let filename = format!("{}!{}!{}!{}.json.gz", submitter.hostname, due.domain, due.start, due.end);
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let mut body = String::with_capacity(b64.len() + 1024);
    let date = OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc2822).unwrap_or_default();
    body.push_str(&format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: Report Domain: {domain} Submitter: {org} Report-ID: <{id}>\r\n\
         Date: {date}\r\nMessage-ID: <{id}>\r\nTLS-Report-Domain: {domain}\r\nTLS-Report-Submitter: {org}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         This is an aggregate TLS report (RFC 8460) from {org} for {domain}.\r\n\r\n\
         --{boundary}\r\nContent-Type: application/tlsrpt+gzip\r\nContent-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\r\n",
        from = submitter.contact,
        domain = due.domain,
        org = submitter.organization,
    ));
    for line in b64.as_bytes().chunks(76) {
        body.push_str(&String::from_utf8_lossy(line));
        body.push_str("\r\n");
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    body.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlsrpt_records() {
        let r = parse_record("v=TLSRPTv1; rua=mailto:tls@example.com,https://r.example/v1 , ftp://x").unwrap();
        assert_eq!(r, vec![Rua::Mailto("tls@example.com".into()), Rua::Https("https://r.example/v1".into())]);
        assert_eq!(parse_record("v=spf1 -all"), None);
        assert_eq!(parse_record("v=TLSRPTv1"), None);
    }
}
