//! End to end: the served OpenAPI document is a valid OpenAPI 3 description (openapi-spec-validator), and the
//! real `mta-server` answers as it says — schemathesis sends generated requests (valid and invalid) to every
//! operation and checks each answer's status, content type, headers and body schema against the document.
//!
//! Both tools come from PyPI (`scripts/test.sh` installs them); outside CI a missing tool skips its test.

use std::process::Command;

use mta_tests::{http_request, TestServer};

/// Whether `python3 -c "import <module>"` works.
fn python_module(module: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success())
}

/// Skip (outside CI) or fail (in CI) when a tool is missing.
fn require(available: bool, tool: &str) -> bool {
    if !available {
        assert!(std::env::var("CI").is_err(), "{tool} missing in CI: scripts/test.sh installs it");
        eprintln!("SKIPPED: {tool} not found (scripts/test.sh installs it from PyPI)");
    }
    available
}

#[test]
fn the_served_document_is_valid_openapi() {
    if !require(python_module("openapi_spec_validator"), "openapi-spec-validator") {
        return;
    }
    let server = TestServer::start("");
    let r = http_request(server.http, "GET", "/api/v1/openapi.json", &[], b"");
    assert_eq!(r.status, 200);
    let path = server.dir.join("openapi.json");
    std::fs::write(&path, &r.body).unwrap();
    let out = Command::new("python3")
        .arg("-m")
        .arg("openapi_spec_validator")
        .arg(&path)
        .output()
        .expect("run openapi-spec-validator");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openapi-spec-validator:\n{report}");
}

#[test]
fn every_answer_conforms_to_the_document() {
    let st = Command::new("st").arg("--version").output().is_ok_and(|o| o.status.success());
    if !require(st, "schemathesis (st)") {
        return;
    }
    // No fault injection: generated `PUT /api/v1/debug/faults` bodies would slow the spool for the rest of the
    // run; with it off that route answers its documented 404.
    let server = TestServer::start("");
    let url = format!("http://{}/api/v1/openapi.json", server.http);
    // Conformance checks only: a 503 under back-pressure on a busy machine is documented, not a failure.
    let checks = "status_code_conformance,content_type_conformance,response_schema_conformance,\
                  response_headers_conformance";
    let out = Command::new("st")
        .args(["--no-color", "run", &url, "--checks", checks, "--max-examples", "25", "--seed", "17"])
        // A generated transfer body names a random peer host that the server would then resolve and connect
        // to: traffic off the loopback. That route is exercised against a real peer in `queue_transfer.rs`.
        .args(["--exclude-operation-id", "startTransfer"])
        .current_dir(&server.dir)
        .output()
        .expect("run schemathesis");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found answers that differ from the document:\n{report}");
}
