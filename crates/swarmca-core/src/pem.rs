//! Certificates out of PEM bundles.

use crate::pemutil;

/// The DER of every `CERTIFICATE` block in `pem`, in order, found with Go's `encoding/pem`
/// rules (text around and between blocks, other blocks and malformed ones are skipped).
pub fn certs_der(pem: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some((block, after)) = pemutil::decode(rest) {
        if block.label == "CERTIFICATE" {
            out.push(block.der);
        }
        rest = after;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_certificate_blocks_are_taken_in_order() {
        let a = pemutil::encode("CERTIFICATE", b"first");
        let k = pemutil::encode("PRIVATE KEY", b"key");
        let b = pemutil::encode("CERTIFICATE", b"second");
        let mut bundle = b"junk before\n".to_vec();
        for p in
            [&a, &k, &b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec(), &b]
        {
            bundle.extend_from_slice(p);
        }
        assert_eq!(certs_der(&bundle), vec![b"first".to_vec(), b"second".to_vec()]);
        assert!(certs_der(b"").is_empty());
    }
}
