//! Target `cfssl_response`: an external CA's answer (HTTP status and body) through the body
//! size cap and the CFSSL response parser.
//!
//! Input: 2 bytes of status selector, 3 bytes of leading-whitespace padding (up to 63 bytes, or
//! for one input in 16 a length around the 256 KiB cap, so that the cap is reached with small
//! inputs), 1 byte of frame size, then the body. The body is fed frame by frame through the same capping step the HTTP
//! client uses, then parsed.

use swarmca_server::external::{append_capped, parse_response, ExternalCaError, CERTIFICATE_MAX_SIZE};

/// The fields a certificate answer must have, read without the parser's error handling.
#[derive(serde::Deserialize)]
struct Probe {
    success: bool,
    result: ProbeResult,
}

#[derive(serde::Deserialize)]
struct ProbeResult {
    certificate: String,
}

/// The statuses that matter, plus anything else.
const STATUSES: [u16; 8] = [200, 400, 500, 201, 404, 502, 100, 299];

/// Runs one input.
pub fn cfssl_response(data: &[u8]) {
    let Some((head, body)) = data.split_first_chunk::<6>() else { return };
    let [s0, s1, p0, p1, p2, frame] = *head;
    let status = if s0 & 0x80 == 0 {
        STATUSES.get(usize::from(s0) % STATUSES.len()).copied().unwrap_or(200)
    } else {
        u16::from_le_bytes([s0 & 0x7f, s1])
    };
    // Mostly a little padding; one input in 16 lands within 64 KiB either side of the cap.
    let pad = if p2 >= 0xf0 {
        CERTIFICATE_MAX_SIZE - 0x1_0000 + ((usize::from(p1) << 9 | usize::from(p0) << 1) & 0x1_ffff)
    } else {
        usize::from(p0) % 64
    };
    let mut sent = vec![b' '; pad];
    sent.extend_from_slice(body);

    // The client's read loop: frames until the cap is reached.
    let frame = usize::from(frame).max(1) * 997;
    let mut buf = Vec::new();
    for chunk in sent.chunks(frame) {
        if buf.len() >= CERTIFICATE_MAX_SIZE {
            break;
        }
        append_capped(&mut buf, chunk);
    }
    let kept = sent.len().min(CERTIFICATE_MAX_SIZE);
    assert_eq!(buf.len(), kept, "the capped read kept the wrong number of bytes");
    assert!(sent.starts_with(&buf), "the capped read is not a prefix of the answer");

    let r = parse_response(status, &buf);
    // Deterministic.
    assert_eq!(r, parse_response(status, &buf));
    match &r {
        Ok(cert) => {
            assert_eq!(status, 200, "a certificate accepted from a non-200 answer");
            // A second reading of the same JSON must find the same certificate: untyped and
            // strict where the body allows it. The typed parse skips ignored fields without
            // checking their UTF-8 or surrogate escapes (Go's encoding/json accepts such
            // bodies too, replacing the bad characters); then a minimal typed re-read, which
            // shares that leniency, must agree.
            let text = String::from_utf8_lossy(&buf);
            let found = match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => {
                    assert_eq!(v.get("success"), Some(&serde_json::Value::Bool(true)));
                    v.get("result")
                        .and_then(|r| r.get("certificate"))
                        .and_then(|c| c.as_str())
                        .map(str::to_string)
                }
                Err(_) => match serde_json::from_slice::<Probe>(&buf) {
                    Ok(p) => {
                        assert!(p.success);
                        Some(p.result.certificate)
                    }
                    Err(e) => panic!("accepted body does not read as JSON: {e}"),
                },
            };
            assert_eq!(found.as_deref().map(str::as_bytes), Some(cert.as_slice()));
            // A cut-off answer never yields a certificate, unless only whitespace was cut.
            if sent.len() > buf.len() {
                let cut = sent.get(buf.len()..).unwrap_or_default();
                assert!(cut.iter().all(u8::is_ascii_whitespace), "a truncated answer gave a certificate");
            }
        }
        Err(ExternalCaError::Status { code, body: shown }) => {
            assert_eq!(*code, status);
            assert!(status != 200);
            assert!(shown.len() <= 3 * 1024 + 64, "status error message is not bounded");
        }
        Err(e) => {
            if status != 200 {
                assert!(
                    status == 400 && matches!(e, ExternalCaError::Rejected(_)),
                    "status {status} gave {e:?}"
                );
            }
        }
    }
    // Only what CFSSL itself said is fatal; transport-level trouble is retried.
    if let Err(e) = &r {
        let fatal = matches!(
            e,
            ExternalCaError::Rejected(_)
                | ExternalCaError::Failed
                | ExternalCaError::InvalidResultType
                | ExternalCaError::InvalidCertificateField
        );
        assert_eq!(e.is_recoverable(), !fatal, "{e:?} classified wrongly");
    }
}
