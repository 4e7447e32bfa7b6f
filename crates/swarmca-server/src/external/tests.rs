use super::*;
use swarmca_core::role::Role;
use tokio::io::{AsyncRead, AsyncWrite};

const CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n";

#[test]
fn worker_request_body_is_swarmkits_json() {
    let body = SignRequest::node(CSR.as_bytes(), "node1", Role::Worker, "cluster1").to_json().unwrap();
    let want = concat!(
        r#"{"hosts":["swarm-worker","node1"],"#,
        r#""certificate_request":"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n","#,
        r#""subject":{"CN":"node1","names":[{"O":"cluster1","OU":"swarm-worker"}],"SerialNumber":""},"#,
        r#""profile":"","crl_override":"","label":"","#,
        r#""NotBefore":"0001-01-01T00:00:00Z","NotAfter":"0001-01-01T00:00:00Z","ReturnPrecert":false,"#,
        r#""metadata":null}"#
    );
    assert_eq!(String::from_utf8(body).unwrap(), want);
}

#[test]
fn manager_request_adds_the_ca_host() {
    let body = SignRequest::node(CSR.as_bytes(), "m1", Role::Manager, "c").to_json().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["hosts"], serde_json::json!(["swarm-manager", "m1", "swarm-ca"]));
    assert_eq!(v["subject"]["names"][0]["OU"], "swarm-manager");
}

#[test]
fn success_returns_the_certificate() {
    let body = br#"{"success":true,"result":{"certificate":"CERT"},"errors":[],"messages":[]}"#;
    assert_eq!(parse_response(200, body).unwrap(), b"CERT");
}

#[test]
fn cfssl_rejections_are_fatal_with_its_messages() {
    let body = br#"{"success":false,"result":null,"errors":[{"code":9002,"message":"CSR Decode failed"}],"messages":[]}"#;
    let e = parse_response(200, body).unwrap_err();
    assert_eq!(e.to_string(), "response errors: [{9002 CSR Decode failed}]");
    assert!(!e.is_recoverable());
    let two = br#"{"success":false,"errors":[{"code":1,"message":"a"},{"code":2,"message":"b"}]}"#;
    assert_eq!(parse_response(200, two).unwrap_err().to_string(), "response errors: [{1 a} {2 b}]");
    for body in [&br#"{"success":false}"#[..], br#"{"success":true,"result":null}"#, b"null", b"{}"] {
        let e = parse_response(200, body).unwrap_err();
        assert_eq!(e, ExternalCaError::Failed, "{}", String::from_utf8_lossy(body));
        assert!(!e.is_recoverable());
    }
    let e = parse_response(200, br#"{"success":true,"result":"x"}"#).unwrap_err();
    assert_eq!(e, ExternalCaError::InvalidResultType);
    let e = parse_response(200, br#"{"success":true,"result":{"certificate":7}}"#).unwrap_err();
    assert_eq!(e, ExternalCaError::InvalidCertificateField);
    let e = parse_response(200, br#"{"success":true,"result":{}}"#).unwrap_err();
    assert_eq!(e, ExternalCaError::InvalidCertificateField);
    assert!(!e.is_recoverable());
}

#[test]
fn bad_status_and_bad_json_are_recoverable() {
    let e = parse_response(500, b"boom").unwrap_err();
    assert_eq!(e.to_string(), "unexpected status code in CSR response: 500 - boom");
    assert!(e.is_recoverable());
    let big = vec![b'a'; 5000];
    let e = parse_response(403, &big).unwrap_err();
    assert!(e.to_string().ends_with("... (5000 bytes)"), "{e}");
    for body in
        [&b"not json"[..], b"", br#"{"success":"yes"}"#, br#"{"success":true,"result":{"certificate":"#]
    {
        let e = parse_response(200, body).unwrap_err();
        assert!(e.to_string().starts_with("unable to parse JSON response"), "{e}");
        assert!(e.is_recoverable());
    }
}

#[test]
fn cfssl_400_for_the_csr_itself_is_fatal_and_other_errors_are_not() {
    // What a real `cfssl serve` answers for an Ed25519 CSR.
    let ed = br#"{"success":false,"result":null,"errors":[{"code":9300,"message":"x509: cannot verify signature: algorithm unimplemented"}],"messages":[]}"#;
    let e = parse_response(400, ed).unwrap_err();
    assert_eq!(
        e.to_string(),
        "response errors: [{9300 x509: cannot verify signature: algorithm unimplemented}]"
    );
    assert!(!e.is_recoverable());
    // Policy (5000) or unclassified errors, other statuses, or non-JSON bodies: recoverable.
    let policy =
        br#"{"success":false,"result":null,"errors":[{"code":5200,"message":"policy"}],"messages":[]}"#;
    for (status, body) in [
        (400, &policy[..]),
        (500, &ed[..]),
        (403, b"Invalid CN"),
        (400, b"Client sent an HTTP request to an HTTPS server."),
    ] {
        let e = parse_response(status, body).unwrap_err();
        assert!(matches!(e, ExternalCaError::Status { .. }) && e.is_recoverable(), "{status}: {e}");
    }
}

#[test]
fn recoverability_matches_swarmkit() {
    assert!(ExternalCaError::Transport("x".into()).is_recoverable());
    assert!(ExternalCaError::Timeout(Duration::from_secs(1)).is_recoverable());
    assert!(ExternalCaError::Body("x".into()).is_recoverable());
    assert!(!ExternalCaError::NoUrls.is_recoverable());
    assert!(!ExternalCaError::Rejected("x".into()).is_recoverable());
    let t = ExternalCaError::Timeout(Duration::from_secs(5)).to_string();
    assert!(t.contains("context deadline exceeded") && t.contains("5s"), "{t}");
}

fn ext(url: &str, cert: &[u8]) -> swarmca_types::ExternalCa {
    swarmca_types::ExternalCa {
        protocol: 0,
        url: url.into(),
        options: Default::default(),
        ca_cert: cert.to_vec(),
    }
}

#[test]
fn filter_keeps_cfssl_entries_for_the_desired_cert_in_order() {
    let a = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec();
    let b = b"-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n".to_vec();
    let mut a_ws = b"\n  ".to_vec();
    a_ws.extend_from_slice(&a);
    a_ws.extend_from_slice(b"\n\n");
    let mut unknown = ext("u4", &a);
    unknown.protocol = 1;
    let list = vec![ext("u1", b""), ext("u2", &b), ext("u3", &a_ws), unknown, ext("u5", &a)];
    assert_eq!(filter_external_ca_urls(&a, &a, &list), ["u1", "u3", "u5"]);
    // During a rotation to b, entries without a cert mean the current root a.
    assert_eq!(filter_external_ca_urls(&b, &a, &list), ["u2"]);
    assert!(filter_external_ca_urls(&a, &a, &[]).is_empty());
}

#[test]
fn tls_config_refuses_bad_credentials() {
    let e = client_tls_config(&[], Some((b"no pem", b"no key"))).unwrap_err();
    assert!(matches!(e, ExternalCaError::TlsConfig(_)), "{e}");
    assert!(client_tls_config(&[], None).is_ok());
}

#[test]
fn urls_are_redacted_for_logs() {
    assert_eq!(redact_url("https://ca:8888/api/v1/cfssl/sign"), "https://ca:8888/api/v1/cfssl/sign");
    assert_eq!(
        redact_url("https://user:secret@ca:8888/api/v1/cfssl/sign"),
        "https://***@ca:8888/api/v1/cfssl/sign"
    );
    assert_eq!(redact_url("http://u@10.0.0.1"), "http://***@10.0.0.1");
    assert_eq!(redact_url("not a url"), "not a url");
}

/// Found by the `cfssl_response` fuzz target: invalid UTF-8 or a lone surrogate escape inside a
/// field the parser ignores does not make the answer unreadable (serde_json does not check
/// skipped strings; Go's encoding/json, which SwarmKit uses, replaces such characters), while
/// invalid UTF-8 in the certificate itself is a parse error, never a certificate with replaced
/// bytes.
#[test]
fn invalid_utf8_is_tolerated_only_in_ignored_fields() {
    let ignored = b"{\"success\":true,\"result\":{\"certificate\":\"x\"},\"messages\":{\"k\xd4\":\"\xff\"}}";
    assert_eq!(parse_response(200, ignored).unwrap(), b"x");
    let surrogate = br#"{"success":true,"result":{"certificate":"x"},"messages":"\ud800"}"#;
    assert_eq!(parse_response(200, surrogate).unwrap(), b"x");
    let in_cert = b"{\"success\":true,\"result\":{\"certificate\":\"x\xd4\"}}";
    assert!(matches!(parse_response(200, in_cert), Err(ExternalCaError::Json(_))));
}

/// A writer that counts the flushes that reach it.
#[derive(Default)]
struct CountingIo {
    flushes: usize,
    written: usize,
}

impl AsyncRead for CountingIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for CountingIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.written += buf.len();
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.flushes += 1;
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn quiet_flush_passes_only_flushes_that_follow_writes() {
    use tokio::io::AsyncWriteExt as _;
    let mut io = QuietFlush::new(CountingIo::default());
    io.flush().await.unwrap();
    io.flush().await.unwrap();
    assert_eq!(io.io.flushes, 0, "nothing written: nothing to flush");
    io.write_all(b"abc").await.unwrap();
    io.flush().await.unwrap();
    assert_eq!(io.io.flushes, 1);
    io.flush().await.unwrap();
    assert_eq!(io.io.flushes, 1, "a second flush with nothing new is not passed on");
    io.write_all(b"").await.unwrap();
    io.flush().await.unwrap();
    assert_eq!(io.io.flushes, 1, "an empty write dirties nothing");
    io.write_all(b"de").await.unwrap();
    io.flush().await.unwrap();
    assert_eq!((io.io.flushes, io.io.written), (2, 5));
}
