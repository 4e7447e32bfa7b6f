//! A leaf certificate built from the signer's template and signed; its validity window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{DnValue, SerialNumber};
use time::OffsetDateTime;

use super::*;

/// Builds and signs a leaf certificate for `spki_der`; returns its DER.
#[allow(clippy::too_many_arguments)]
pub(super) fn issue(
    signer: &Signer,
    spki_der: &[u8],
    org: &str,
    ou: &str,
    cn: &str,
    hosts: &[&str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: [u8; 20],
) -> Result<Vec<u8>, String> {
    let fields = leaf::LeafFields {
        spki_der,
        org,
        ou,
        cn,
        hosts,
        not_before,
        not_after,
        serial: normalized_serial(serial),
    };
    let tbs = signer.template.tbs(&fields)?;
    signer.template.sign(&tbs, &signer.key)
}

/// 20 bytes with the top bit cleared (a positive integer); all-zero becomes 1.
pub(super) fn normalized_serial(mut serial: [u8; 20]) -> [u8; 20] {
    if let Some(first) = serial.first_mut() {
        *first &= 0x7f;
    }
    if serial.iter().all(|&b| b == 0) {
        if let Some(last) = serial.last_mut() {
            *last = 1;
        }
    }
    serial
}

/// The same leaf through rcgen: the reference the template encoder is tested against.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(super) fn issue_with_rcgen(
    signer: &Signer,
    spki_der: &[u8],
    org: &str,
    ou: &str,
    cn: &str,
    hosts: &[&str],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    serial: [u8; 20],
) -> Result<Vec<u8>, String> {
    use rcgen::{CertificateParams, DistinguishedName, DnType, IsCa, KeyIdMethod, KeyUsagePurpose};
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| e.to_string())?;
    let der = CertificateDer::from(signer.cert_der.as_slice());
    let issuer = rcgen::Issuer::from_ca_cert_der(&der, key::SharedKey(signer.key.clone()))
        .map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for (ty, value) in
        [(DnType::OrganizationName, org), (DnType::OrganizationalUnitName, ou), (DnType::CommonName, cn)]
    {
        if !value.is_empty() {
            params.distinguished_name.push(ty, dn_value(value));
        }
    }
    params.subject_alt_names = hosts
        .iter()
        .filter(|h| !h.is_empty())
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(rcgen::SanType::IpAddress(ip)),
            Err(_) => rcgen::string::Ia5String::try_from(*h)
                .map(rcgen::SanType::DnsName)
                .map_err(|e| format!("invalid DNS name {h:?}: {e}")),
        })
        .collect::<Result<_, _>>()?;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(serial_number(serial));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.key_identifier_method =
        KeyIdMethod::PreSpecified(key_id(rcgen::PublicKeyData::der_bytes(&public_key)));
    params.use_authority_key_identifier_extension = signer.has_ski;
    let cert = params.signed_by(&public_key, &issuer).map_err(|e| e.to_string())?;
    Ok(cert.der().to_vec())
}

/// Issues a throwaway certificate to prove that the signer works: the leaf names the signing
/// certificate's subject byte for byte (chain building compares raw names) and its signature
/// verifies with the certificate's key.
pub(super) fn check_signer(signer: &Signer) -> Result<(), RootCaError> {
    let cert = chain::parse_cert(&signer.cert_der).map_err(RootCaError::MalformedCertificate)?;
    let spki = cert.public_key().raw;
    let not_before = OffsetDateTime::UNIX_EPOCH;
    let der = issue(signer, spki, "check", "check", "check", &[], not_before, not_before, [1; 20])
        .map_err(RootCaError::UnusableSigner)?;
    let leaf = chain::parse_cert(&der).map_err(RootCaError::Internal)?;
    if leaf.issuer().as_raw() != cert.subject().as_raw() {
        return Err(RootCaError::UnusableSigner("issuer name cannot be reproduced byte for byte".into()));
    }
    if leaf.verify_signature(Some(cert.public_key())).is_err() {
        return Err(RootCaError::UnusableSigner("test signature does not verify".into()));
    }
    Ok(())
}

/// PrintableString when possible (as Go does), UTF8String otherwise.
pub(super) fn dn_value(s: &str) -> DnValue {
    match rcgen::string::PrintableString::try_from(s) {
        Ok(p) => DnValue::PrintableString(p),
        Err(_) => DnValue::Utf8String(s.to_string()),
    }
}

/// rcgen's form of a [`normalized_serial`].
pub(super) fn serial_number(serial: [u8; 20]) -> SerialNumber {
    SerialNumber::from_slice(&normalized_serial(serial))
}

/// SHA-1 of the subjectPublicKey bits (RFC 5280 method 1, as Go uses).
pub(super) fn key_id(public_key_bits: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, public_key_bits).as_ref().to_vec()
}

/// Whole seconds since the Unix epoch (negative before it).
pub(super) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

pub(super) fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => i128::try_from(e.duration().as_nanos()).map_or(i128::MIN, |n| -n),
    }
}

pub(super) const NANOS_PER_MINUTE: i128 = 60_000_000_000;

/// `now` rounded to the nearest minute (halves away from zero, like Go's `Round`), minus
/// [`CERT_BACKDATE`].
pub(super) fn backdated_start(now: SystemTime) -> Result<OffsetDateTime, String> {
    let n = unix_nanos(now);
    let half = NANOS_PER_MINUTE / 2;
    let rounded = if n >= 0 {
        (n + half).div_euclid(NANOS_PER_MINUTE) * NANOS_PER_MINUTE
    } else {
        -((-n + half).div_euclid(NANOS_PER_MINUTE) * NANOS_PER_MINUTE)
    };
    let backdate = i128::try_from(CERT_BACKDATE.as_nanos()).map_err(|e| e.to_string())?;
    OffsetDateTime::from_unix_timestamp_nanos(rounded - backdate).map_err(|e| e.to_string())
}

pub(super) fn add(t: OffsetDateTime, d: Duration) -> Result<OffsetDateTime, String> {
    let d = time::Duration::try_from(d).map_err(|e| e.to_string())?;
    t.checked_add(d).ok_or_else(|| "time out of range".to_string())
}
