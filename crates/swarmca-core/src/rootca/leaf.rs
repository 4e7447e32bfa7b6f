//! Node certificates encoded directly from a per-signer template.
//!
//! Everything in a leaf that depends only on the signer — the signature algorithm, the
//! issuer name (copied byte for byte from the signing certificate's subject, which is what
//! chain building compares), the authority key identifier and the three constant
//! extensions — is encoded once when the signer is loaded. Issuing writes the rest
//! (serial, validity, subject, key, SANs, subject key identifier) around it and signs the
//! result with the CA key. The output is byte-identical to what rcgen produced for the same
//! inputs before (a test compares them), at a fraction of the cost.

use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;

use super::chain;
use super::key::CaKey;
use crate::der::{self, TAG_BIT_STRING, TAG_INTEGER, TAG_OCTET_STRING, TAG_SEQUENCE};

const TAG_SET: u8 = 0x31;
const TAG_PRINTABLE_STRING: u8 = 0x13;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
/// `[0]` constructed: the TBSCertificate version.
const TAG_VERSION: u8 = 0xa0;
/// `[3]` constructed: the TBSCertificate extensions.
const TAG_EXTENSIONS: u8 = 0xa3;
/// GeneralName `dNSName` and `iPAddress` (implicit, primitive).
const TAG_DNS_NAME: u8 = 0x82;
const TAG_IP_ADDRESS: u8 = 0x87;

/// `[0] { INTEGER 2 }`: X.509 v3.
const VERSION_V3: &[u8] = &[TAG_VERSION, 0x03, TAG_INTEGER, 0x01, 0x02];
/// OIDs (contents) of the subject attributes.
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_OU: &[u8] = &[0x55, 0x04, 0x0b];
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// Extension OIDs (whole TLVs).
const OID_AKI: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x23];
const OID_SAN: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11];
const OID_SKI: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x0e];
/// keyUsage, critical: digitalSignature | keyEncipherment.
const EXT_KEY_USAGE: &[u8] =
    &[0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x05, 0xa0];
/// extKeyUsage: serverAuth, clientAuth.
const EXT_EXT_KEY_USAGE: &[u8] = &[
    0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x25, 0x04, 0x16, 0x30, 0x14, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05,
    0x05, 0x07, 0x03, 0x01, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
];
/// basicConstraints, critical: not a CA.
const EXT_BASIC_CONSTRAINTS: &[u8] =
    &[0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00];

/// What a signer contributes to every leaf it issues.
pub(crate) struct LeafTemplate {
    /// The signature AlgorithmIdentifier (whole TLV).
    alg: &'static [u8],
    /// The signing certificate's subject Name (whole TLV), the leaves' issuer.
    issuer: Vec<u8>,
    /// The authorityKeyIdentifier extension (whole TLV) when the signing certificate has a
    /// subject key identifier; Go omits it otherwise.
    aki: Option<Vec<u8>>,
}

/// What varies from one leaf to the next.
pub(crate) struct LeafFields<'a> {
    pub(crate) spki_der: &'a [u8],
    pub(crate) org: &'a str,
    pub(crate) ou: &'a str,
    pub(crate) cn: &'a str,
    pub(crate) hosts: &'a [&'a str],
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) serial: [u8; 20],
}

impl LeafTemplate {
    /// The template of the signer whose certificate is `cert_der` and key is `key`.
    pub(crate) fn new(cert_der: &[u8], key: &CaKey) -> Result<LeafTemplate, String> {
        let cert = chain::parse_cert(cert_der)?;
        let issuer = cert.tbs_certificate.subject.as_raw().to_vec();
        let ski = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(kid) => Some(kid.0.to_vec()),
            _ => None,
        });
        let aki = ski.map(|kid| {
            // AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }
            let value = der::tlv(TAG_SEQUENCE, &der::tlv(0x80, &kid));
            extension(OID_AKI, &der::tlv(TAG_OCTET_STRING, &value))
        });
        Ok(LeafTemplate { alg: key.algorithm_identifier_der(), issuer, aki })
    }

    /// The DER TBSCertificate of a leaf with `f`.
    pub(crate) fn tbs(&self, f: &LeafFields<'_>) -> Result<Vec<u8>, String> {
        let mut subject = Vec::with_capacity(96);
        for (oid, value) in [(OID_O, f.org), (OID_OU, f.ou), (OID_CN, f.cn)] {
            if !value.is_empty() {
                let tag =
                    if value.bytes().all(is_printable) { TAG_PRINTABLE_STRING } else { TAG_UTF8_STRING };
                let atv = [der::tlv(der::TAG_OID, oid), der::tlv(tag, value.as_bytes())].concat();
                subject.extend_from_slice(&der::tlv(TAG_SET, &der::tlv(TAG_SEQUENCE, &atv)));
            }
        }

        let mut names = Vec::with_capacity(64);
        for host in f.hosts.iter().filter(|h| !h.is_empty()) {
            match host.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => names.extend_from_slice(&der::tlv(TAG_IP_ADDRESS, &ip.octets())),
                Ok(IpAddr::V6(ip)) => names.extend_from_slice(&der::tlv(TAG_IP_ADDRESS, &ip.octets())),
                Err(_) if host.is_ascii() => {
                    names.extend_from_slice(&der::tlv(TAG_DNS_NAME, host.as_bytes()))
                }
                Err(_) => return Err(format!("invalid DNS name {host:?}: not ASCII")),
            }
        }

        let key_bits = subject_public_key_bits(f.spki_der).ok_or("malformed subject public key info")?;
        let ski = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, key_bits);

        let mut exts = Vec::with_capacity(256);
        if let Some(aki) = &self.aki {
            exts.extend_from_slice(aki);
        }
        if !names.is_empty() {
            let san = der::tlv(TAG_SEQUENCE, &names);
            exts.extend_from_slice(&extension(OID_SAN, &der::tlv(TAG_OCTET_STRING, &san)));
        }
        exts.extend_from_slice(EXT_KEY_USAGE);
        exts.extend_from_slice(EXT_EXT_KEY_USAGE);
        let ski_value = der::tlv(TAG_OCTET_STRING, ski.as_ref());
        exts.extend_from_slice(&extension(OID_SKI, &der::tlv(TAG_OCTET_STRING, &ski_value)));
        exts.extend_from_slice(EXT_BASIC_CONSTRAINTS);

        let validity = [time_tlv(f.not_before)?, time_tlv(f.not_after)?].concat();
        let mut body = Vec::with_capacity(512 + self.issuer.len() + f.spki_der.len() + exts.len());
        body.extend_from_slice(VERSION_V3);
        body.extend_from_slice(&der::tlv(TAG_INTEGER, serial_contents(&f.serial)));
        body.extend_from_slice(self.alg);
        body.extend_from_slice(&self.issuer);
        body.extend_from_slice(&der::tlv(TAG_SEQUENCE, &validity));
        body.extend_from_slice(&der::tlv(TAG_SEQUENCE, &subject));
        body.extend_from_slice(f.spki_der);
        body.extend_from_slice(&der::tlv(TAG_EXTENSIONS, &der::tlv(TAG_SEQUENCE, &exts)));
        Ok(der::tlv(TAG_SEQUENCE, &body))
    }

    /// Signs `tbs` with `key` and returns the whole certificate.
    pub(crate) fn sign(&self, tbs: &[u8], key: &CaKey) -> Result<Vec<u8>, String> {
        let sig = key.sign(tbs)?;
        let mut bits = Vec::with_capacity(sig.len() + 1);
        bits.push(0);
        bits.extend_from_slice(&sig);
        let body = [tbs, self.alg, &der::tlv(TAG_BIT_STRING, &bits)].concat();
        Ok(der::tlv(TAG_SEQUENCE, &body))
    }
}

/// One Extension (non-critical): `SEQUENCE { OID, OCTET STRING value }`.
fn extension(oid_tlv: &[u8], octet_string_tlv: &[u8]) -> Vec<u8> {
    der::tlv(TAG_SEQUENCE, &[oid_tlv, octet_string_tlv].concat())
}

/// The subjectPublicKey bits of a SubjectPublicKeyInfo (the BIT STRING contents after the
/// unused-bits byte), which the subject key identifier hashes.
fn subject_public_key_bits(spki_der: &[u8]) -> Option<&[u8]> {
    let body = der::expect_all(spki_der, TAG_SEQUENCE)?;
    let (_, rest) = der::expect(body, TAG_SEQUENCE)?;
    let bits = der::expect_all(rest, TAG_BIT_STRING)?;
    bits.get(1..)
}

/// The INTEGER contents of a 20-byte serial: top bit cleared (positive), all-zero made 1,
/// leading zero bytes dropped (minimal encoding).
fn serial_contents(serial: &[u8; 20]) -> &[u8] {
    // `serial` has been normalised by the caller; only minimal encoding is left.
    let skip = serial.iter().take(19).take_while(|&&b| b == 0).count();
    let rest = serial.get(skip..).unwrap_or(serial.as_slice());
    // A zero byte is kept in front of a byte with its top bit set.
    if skip > 0 && rest.first().is_some_and(|b| b & 0x80 != 0) {
        serial.get(skip - 1..).unwrap_or(rest)
    } else {
        rest
    }
}

/// PrintableString's character set (X.680).
fn is_printable(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&c)
}

/// UTCTime for 1950–2049, GeneralizedTime otherwise (RFC 5280 §4.1.2.5); whole seconds.
fn time_tlv(t: OffsetDateTime) -> Result<Vec<u8>, String> {
    let year = t.year();
    let rest =
        format!("{:02}{:02}{:02}{:02}{:02}Z", u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second());
    if (1950..2050).contains(&year) {
        Ok(der::tlv(TAG_UTC_TIME, format!("{:02}{rest}", year % 100).as_bytes()))
    } else if (0..=9999).contains(&year) {
        Ok(der::tlv(TAG_GENERALIZED_TIME, format!("{year:04}{rest}").as_bytes()))
    } else {
        Err(format!("year {year} cannot be encoded in a certificate"))
    }
}
