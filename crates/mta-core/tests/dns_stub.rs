//! The loopback stub: a plain hickory TokioResolver (as mail-auth uses) answered from our pool.

mod dns_support;

use std::net::SocketAddr;

use dns_support::{config, fixture, resolver};
use hickory_resolver::TokioResolver;

fn client(stub: SocketAddr) -> TokioResolver {
    mta_core::dns::stub_client(stub, std::time::Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn dns_hickory_client_gets_answers_through_our_cache() {
    let f = fixture().await;
    let r = resolver(config(&f));
    let (addr, task) = r.serve_stub("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let c = client(addr);
    for _ in 0..3 {
        let txt = c.txt_lookup("txt.test.").await.unwrap();
        let rec = txt.answers().iter().next().unwrap();
        assert_eq!(rec.data.to_string(), "v=spf1 -all");
    }
    assert_eq!(f.proxy.received_for("txt.test"), 1, "one upstream query, then our cache");
    let ips = c.lookup_ip("mx1.multi.test.").await.unwrap();
    assert_eq!(ips.iter().next().unwrap().to_string(), "127.0.1.1");
    let mx = c.mx_lookup("multi.test.").await.unwrap();
    assert_eq!(mx.answers().len(), 3);
    let nx = c.txt_lookup("nx.test.").await.unwrap_err();
    assert!(nx.is_nx_domain(), "{nx:?}");
    // our cache now holds it too
    assert_eq!(r.query_txt("txt.test").await.unwrap().source, mta_core::dns::Source::Cache);
    task.abort();
}

#[tokio::test]
async fn dns_the_root_name_is_nodata_not_an_error() {
    // mail-auth asks `. A` for a null MX target (RFC 7505): FORMERR made it a temperror
    let f = fixture().await;
    let r = resolver(config(&f));
    let (addr, task) = r.serve_stub("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let c = client(addr);
    let e = c.ipv4_lookup(".").await.unwrap_err();
    assert!(e.is_no_records_found() && !e.is_nx_domain(), "{e:?}");
    task.abort();
}
