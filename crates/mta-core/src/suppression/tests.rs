use super::*;

fn spool(dir: &std::path::Path) -> Spool {
    match Spool::open(mta_spool::SpoolConfig::new(dir, "t")) {
        Ok(s) => s,
        Err(e) => panic!("open spool: {e}"),
    }
}

#[tokio::test]
async fn entries_are_scoped_by_tenant_survive_a_reopen_and_page() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    {
        let s = Suppressions::load(spool(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.is_suppressed(None, "a@x.test"));
        assert_eq!(s.put(&Entry::new("A@X.test", Reason::HardBounce, None)).await.ok(), Some(true));
        assert_eq!(s.put(&Entry::new("a@x.test", Reason::Manual, None)).await.ok(), Some(false));
        s.put(&Entry::new("b@x.test", Reason::Complaint, Some("t1".into()))).await.unwrap_or_default();
        assert!(
            s.is_suppressed(None, "a@x.test") && s.is_suppressed(Some("t9"), "<A@x.TEST>"),
            "global entries apply to all"
        );
        assert!(s.is_suppressed(Some("t1"), "b@x.test"));
        assert!(!s.is_suppressed(Some("t2"), "b@x.test") && !s.is_suppressed(None, "b@x.test"), "tenant scoped");
        let got = s.get(Some("t1"), "b@x.test").await.ok().flatten().map(|e| (e.reason, e.tenant));
        assert_eq!(got, Some((Reason::Complaint, Some("t1".into()))));
        s.spool.close().await;
    }
    let s = Suppressions::load(spool(dir.path())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.len(), 2);
    assert!(s.is_suppressed(None, "a@x.test") && s.is_suppressed(Some("t1"), "b@x.test"));
    for i in 0..5 {
        s.put(&Entry::new(format!("u{i}@y.test"), Reason::Manual, None)).await.unwrap_or_default();
    }
    let (page, next) = s.list_blocking(None, None, 4).unwrap_or_default();
    assert_eq!(page.len(), 4);
    let (rest, last) = s.list_blocking(None, next.as_deref(), 4).unwrap_or_default();
    assert_eq!((rest.len(), last), (3, None));
    let (only, _) = s.list_blocking(Some("t1"), None, 10).unwrap_or_default();
    assert_eq!(only.iter().map(|e| e.email.as_str()).collect::<Vec<_>>(), ["b@x.test"]);
    assert_eq!(s.remove(None, "a@x.test").await.ok(), Some(true));
    assert!(!s.is_suppressed(None, "a@x.test"));
    assert_eq!(s.remove(None, "a@x.test").await.ok(), Some(false));
    assert!(matches!(
        s.put(&Entry::new("nobody", Reason::Manual, None)).await,
        Err(SuppressionError::InvalidAddress(_))
    ));
}
